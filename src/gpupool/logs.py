"""One logging setup for every role (gateway, provider, checker, CLI commands).

    setup(verbosity=0, fmt="text", log_requests=False)   # at the edge, before models load

What each level shows:
- `--quiet` (verbosity -1): warnings and errors only.
- default (0): lifecycle events at INFO: gateway listening (its URL), provider or
  checker joined/left/draining/suspended, models loaded or failed, keys created.
- `-v` / `--verbose` (1), or `--log-requests`: also one line per request, from the
  `gpupool.requests` logger: id, key name, model, provider, status, latency, cost.
- `-vv` (2): gpupool's DEBUG lines too.

`fmt="json"` writes one JSON object per line (`ts`, `level`, `logger`, `msg`, and a
request line's fields), for log shippers. Third-party noise stays out at every
level below `-vv`: tqdm progress bars, transformers/huggingface chatter and their
FutureWarning/DeprecationWarning lines, httpx's line per HTTP call.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from datetime import datetime, timezone
from typing import Any

REQUESTS = "gpupool.requests"
FORMATS = ("text", "json")

# Libraries that log at INFO (or print progress) about things an operator does not act on.
NOISY = ("httpx", "httpcore", "urllib3", "filelock", "huggingface_hub", "transformers", "sentence_transformers",
         "torch", "websockets", "asyncio", "uvicorn", "uvicorn.error", "web3", "aiosqlite", "sqlalchemy")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a record's `fields` extra (a dict) is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def quiet_third_parties() -> None:
    """Environment for model libraries, set before they are imported: no progress bars, no chatter."""
    for name, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TQDM_DISABLE", "1"),
                        ("TRANSFORMERS_VERBOSITY", "error"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
                        ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    # Deprecation notices are for the library's developers, not for a GPU owner reading its log.
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)


def setup(verbosity: int = 0, fmt: str = "text", log_requests: bool = False) -> None:
    """Configure the root logger once per process (later calls replace the handler)."""
    if fmt not in FORMATS:
        raise ValueError(f"--log-format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING if verbosity < 0 else logging.INFO)
    logging.getLogger("gpupool").setLevel(root.level)
    requests_on = (log_requests or verbosity >= 1) and verbosity >= 0
    logging.getLogger(REQUESTS).setLevel(logging.INFO if requests_on else logging.WARNING)
    if verbosity < 2:
        quiet_third_parties()
        for name in NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # what still warns goes through our handler (one line, our format)


def request_line(logger: logging.Logger, **fields: Any) -> None:
    """One request's line: `request ID key=… model=… provider=… status=… latency_ms=… cost_ucr=…`."""
    if not logger.isEnabledFor(logging.INFO):
        return
    rid = fields.pop("request_id")
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    logger.info("request %s %s", rid, text, extra={"fields": {"request_id": rid, **fields}})
