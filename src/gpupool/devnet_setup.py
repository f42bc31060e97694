"""What the local devnet serves, the one-time model preparation, and the banner it prints."""

from __future__ import annotations

from pathlib import Path


def default_serve() -> list[str]:
    """Text embeddings and chat, text read off images (real PP-OCRv4) and image search (tiny-clip:
    random weights, like tiny-llama)."""
    return ["minilm=embeddings:minilm", "tiny-llama=generate:tiny-llama", "ocr=ocr", "tiny-clip=clip:tiny-clip"]


# Devnet prices (µcr per 1M tokens) so every request is metered and charged like on a real network.
# Models that read images also price each image (IN/OUT/IMAGE, IMAGE in µcr): ocr counts one
# prompt unit per image and one completion unit per word; tiny-clip counts an image as the 17
# positions its vision tower reads.
DEV_PRICES = ["minilm=20000", "tiny-llama=100000/400000", "echo=10000/40000", "ocr=100000/200000/2",
              "tiny-clip=20000/0/1"]
DEV_STARTING_BALANCE = 1_000 * 1_000_000  # 1,000 credits for the development key's account


def checker_serve(serve: list[str]) -> list[str]:
    """Checkers hold the same models as reference (echo re-runs are exact too)."""
    return list(serve)


def dev_price_args(serve: list[str]) -> list[str]:
    names = {s.split("=")[0] for s in serve}
    return [arg for p in DEV_PRICES if p.split("=")[0] in names for arg in ("--price", p)]


def prepare_models(progress: bool = False) -> None:
    """Create the untrained tiny-llama and tiny-clip demo models once (random weights, a few seconds),
    before providers and checkers start: they would otherwise race to build them."""
    try:
        from gpupool.provider.tiny_clip import create_tiny_clip, default_tiny_clip_path
        from gpupool.provider.tiny_model import create_tiny_llama, default_tiny_llama_path
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit(f"the devnet needs the ml extra: pip install -e '.[ml]' ({exc})") from exc
    for name, path, create in (("tiny-llama", default_tiny_llama_path(), create_tiny_llama),
                               ("tiny-clip", default_tiny_clip_path(), create_tiny_clip)):
        if not (path / "config.json").exists() and progress:
            print(f"creating the untrained {name} demo model in {path} (once)...", flush=True)
        create(path)


def banner(url: str, key: str, echo_only: bool = False, *, admin_token: str = "", checkers: int = 0,
           providers: int = 0, pointer: Path | None = None) -> str:
    chat_model = "echo" if echo_only else "tiny-llama"
    embed = "" if echo_only else f"""
  curl {url}/v1/embeddings -H "Authorization: Bearer {key}" \\
       -H "Content-Type: application/json" -d '{{"model": "minilm", "input": "red running shoes"}}'
"""
    models = ("echo (no model)" if echo_only else
              "minilm (real all-MiniLM-L6-v2 embeddings), tiny-llama (UNTRAINED demo model: random weights, "
              "gibberish text),\n                ocr (real PP-OCRv4: text in images), tiny-clip (UNTRAINED demo "
              "CLIP: random weights, image and text embeddings that mean nothing)")
    return f"""
gpupool devnet is up: 1 gateway, {providers} providers, {checkers} checkers.

  dashboard   : {url}/
  base URL    : {url}/v1
  API key     : {key}
  admin token : {admin_token}   (for {url}/admin/*: -H "Authorization: Bearer {admin_token}")
  models      : {models}

curl:
  curl {url}/v1/chat/completions -H "Authorization: Bearer {key}" \\
       -H "Content-Type: application/json" \\
       -d '{{"model": "{chat_model}", "messages": [{{"role": "user", "content": "Hello there"}}], "max_tokens": 20}}'
{embed}
openai (Python):
  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="{key}")
  stream = client.chat.completions.create(model="{chat_model}", stream=True, max_tokens=20,
                                          messages=[{{"role": "user", "content": "Hello there"}}])
  for chunk in stream:
      if chunk.choices:
          print(chunk.choices[0].delta.content or "", end="", flush=True)

money: the key's account starts with {DEV_STARTING_BALANCE // 1_000_000:,} credits (1 credit = 1,000,000 µcr);
  each response's usage.cost_ucr says what it cost. In another terminal (they find this devnet
  through {pointer or "~/.gpupool/devnet.json"}):
  .venv/bin/gpupool status       # gateway, models, providers, checkers
  .venv/bin/gpupool account      # the key's balance, holds and recent charges
  .venv/bin/gpupool providers    # who serves what, where
  .venv/bin/gpupool ledger balance devnet

Press Ctrl-C to stop every process this command started.
"""
