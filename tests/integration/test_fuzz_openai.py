"""Schema fuzzing of the OpenAI-compatible API: no generated request gets a 5xx or hangs.

schemathesis generates requests from OpenAI's published OpenAPI description of the
four operations the gateway serves (`POST /v1/embeddings`, `POST /v1/chat/completions`,
`POST /v1/completions`, `GET /v1/models`; cut from the full spec into
tests/specs/openai-fuzz-spec.json by tests/specs/extract_fuzz_spec.py), both
schema-valid bodies and bodies that break the schema, and sends them with a valid API
key to a real gateway with real echo providers. Every answer must be below 500,
arrive without a 30 s silence (a hung connection), and be an OpenAI error body when
it is a refusal. Most valid bodies name a model that exists (the spec's model names
do not), so the cases reach routing, the providers and back instead of stopping at
"model not found".

`GPUPOOL_FUZZ_CASES` is hypothesis's budget for the three POST operations together
(default 300, derandomized so a failure reproduces); schemathesis adds its coverage
cases (boundary values, wrong types, unsupported methods) on top, so CI sends about
2,200 requests in ~20 s. The issue's manual run, `GPUPOOL_FUZZ_CASES=3000`, sends
about 4,900 in 1.5-4 min (quiet or busy 2-core box). With
`GPUPOOL_FUZZ_KEEP_GOING=1` a 5xx does not stop the run: every bad case is counted and
listed when the network stops (a measurement of how many cases fail, not just the first).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import requests
from hypothesis import HealthCheck

schemathesis = pytest.importorskip("schemathesis", reason="needs the dev extra (schemathesis)")

from gpupool.devnet import Network  # noqa: E402

SPEC = Path(__file__).resolve().parents[1] / "specs" / "openai-fuzz-spec.json"
CASES = int(os.environ.get("GPUPOOL_FUZZ_CASES", "300"))
# GET /v1/models has no parameters: a handful of cases exhaust it; the rest go to the three POSTs.
PER_OPERATION = math.ceil(CASES / 3)
# No byte for this long (connecting or reading) is a hung connection: echo answers in milliseconds.
HANG_S = 30.0
KEEP_GOING = os.environ.get("GPUPOOL_FUZZ_KEEP_GOING", "") not in ("", "0")
# The model each operation can really reach on the fuzz network.
SERVED = {"/embeddings": "echo-embed", "/chat/completions": "echo", "/completions": "echo"}
CORE_PARAMETERS = {"model", "messages", "prompt", "input", "max_tokens", "max_completion_tokens", "temperature",
                   "top_p", "seed", "stop", "stream", "stream_options", "user", "encoding_format", "dimensions",
                   "n", "frequency_penalty", "presence_penalty"}

schema = schemathesis.openapi.from_path(
    SPEC,
    config=schemathesis.config.SchemathesisConfig.from_dict(
        {"generation": {"mode": "all", "with-security-parameters": False}}),
).include(path_regex=r"^/(embeddings|chat/completions|completions|models)$")

seen: Counter[str] = Counter()
statuses: Counter[int] = Counter()
failures: list[str] = []


@pytest.fixture(scope="module")
def fuzz_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """Gateway + two echo providers (chat, embeddings), shared by the four operations' runs."""
    net = Network(tmp_path_factory.mktemp("fuzz") / "net")
    try:
        net.start_gateway()
        net.start_provider(["echo=echo:chat", "echo-embed=echo:embeddings"], max_concurrency=16)
        net.start_provider(["echo=echo:chat"], max_concurrency=16)
        net.wait_for_models({"echo": 2, "echo-embed": 1}, timeout=90)
        yield net
    finally:
        net.stop(timeout=10)
        if seen:
            print(f"\nfuzz: {sum(seen.values())} cases sent: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(seen.items()) if v > 1)
                  + f"; statuses: {dict(sorted(statuses.items()))}")
    if failures:
        pytest.fail(f"{len(failures)} of {sum(seen.values())} cases failed:\n" + "\n".join(failures), pytrace=False)


@pytest.fixture(scope="module")
def http(fuzz_net: Network) -> Iterator[requests.Session]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {fuzz_net.dev_key()}"
    yield session
    session.close()


def aim_at_a_served_model(case: schemathesis.Case) -> None:
    """Point most JSON-object bodies at what the fuzz network really serves.

    By the body's own hash (so derandomized runs stay reproducible): a quarter keep the
    generated model name (the 404 path); a quarter name a served model; half also keep only
    the core parameters every OpenAI-compatible server takes, with their generated values,
    because the spec's many optional features (tools, audio, ...) are refused with a 400 and
    would otherwise stop nearly every case at the edge, short of routing and the providers.
    """
    body = case.body
    served = SERVED.get(case.path)
    if not (served and isinstance(body, dict) and isinstance(body.get("model"), str)):
        return
    digest = sum(json.dumps(body, sort_keys=True, default=str).encode()) % 4
    if digest >= 1:
        body["model"] = served
    if digest >= 2:
        for name in [k for k in body if k not in CORE_PARAMETERS]:
            del body[name]


@schema.parametrize()
@hypothesis.settings(max_examples=PER_OPERATION, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(HealthCheck), print_blob=True,
                     phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])  # shrinking: minutes of retries
def test_no_generated_request_gets_a_5xx_or_hangs(case: schemathesis.Case, fuzz_net: Network,
                                                   http: requests.Session) -> None:
    aim_at_a_served_model(case)
    seen[f"{case.method} {case.path}"] += 1
    what = f"{case.method} {case.path} body={json.dumps(case.body, default=str)[:2000]}"
    try:
        # The generated Authorization header (often empty) is replaced by the valid key.
        response = case.call(base_url=fuzz_net.gateway_url + "/v1", session=http, timeout=HANG_S,
                             headers={"Authorization": http.headers["Authorization"]})
    except requests.Timeout:
        problem = f"nothing received for {HANG_S:.0f} s (hung connection) for {what}"
    else:
        problem = ""
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            problem = f"{response.status_code} for {what}: {response.text[:300]}"
        elif response.status_code >= 400 and "error" not in _json(response):
            # Refusals are OpenAI error bodies a client library can read.
            problem = f"{response.status_code} without an OpenAI error body for {what}: {response.text[:300]}"
    if problem and KEEP_GOING:
        failures.append(problem)
    elif problem:
        pytest.fail(problem, pytrace=False)


def _json(response: object) -> dict[str, object]:
    try:
        body = response.json()  # type: ignore[attr-defined]
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
