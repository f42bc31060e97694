"""What the local devnet serves, the one-time model preparation, and the banner it prints."""

from __future__ import annotations

from pathlib import Path


def default_serve() -> list[str]:
    return ["minilm=embeddings:minilm", "tiny-llama=generate:tiny-llama"]


# Devnet prices (µcr per 1M tokens) so every request is metered and charged like on a real network.
DEV_PRICES = ["minilm=20000", "tiny-llama=100000/400000", "echo=10000/40000"]
DEV_STARTING_BALANCE = 1_000 * 1_000_000  # 1,000 credits for the development key's account


def checker_serve(serve: list[str]) -> list[str]:
    """Checkers hold the same models as reference (echo re-runs are exact too)."""
    return list(serve)


def dev_price_args(serve: list[str]) -> list[str]:
    names = {s.split("=")[0] for s in serve}
    return [arg for p in DEV_PRICES if p.split("=")[0] in names for arg in ("--price", p)]


def prepare_models(progress: bool = False) -> None:
    """Create the untrained tiny-llama demo model once (random weights, a few seconds)."""
    try:
        from gpupool.provider.tiny_model import create_tiny_llama, default_tiny_llama_path
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit(f"the devnet needs the ml extra: pip install -e '.[ml]' ({exc})") from exc
    path = default_tiny_llama_path()
    if not (path / "config.json").exists() and progress:
        print(f"creating the untrained tiny-llama demo model in {path} (once)...", flush=True)
    create_tiny_llama(path)


def banner(url: str, key: str, echo_only: bool = False, *, admin_token: str = "", checkers: int = 0,
           providers: int = 0, pointer: Path | None = None) -> str:
    chat_model = "echo" if echo_only else "tiny-llama"
    embed = "" if echo_only else f"""
  curl {url}/v1/embeddings -H "Authorization: Bearer {key}" \\
       -H "Content-Type: application/json" -d '{{"model": "minilm", "input": "red running shoes"}}'
"""
    models = ("echo (no model)" if echo_only else
              "minilm (real all-MiniLM-L6-v2 embeddings), tiny-llama (UNTRAINED demo model: random weights, "
              "gibberish text)")
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
