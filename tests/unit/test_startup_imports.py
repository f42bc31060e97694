"""What the gateway imports to start (issue 18: a restarted gateway's downtime is mostly its imports).

Checked in a fresh interpreter (this one has imported everything): `gpupool gateway`
binds and listens before the heavy part of its start (`gateway/web/server.py`), so the
command and the server module must not pull in the app, the database or numpy; and the
whole gateway must not pull in ML or EVM libraries, which only providers, checkers and
an EVM ledger use. Not a timing test: a stray import fails it on any machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
# Loaded only by providers and checkers (torch, transformers, images, OCR), the simulator's
# charts, or an EVM ledger (web3 and the contract compiler).
ML_AND_EVM = ("torch", "transformers", "tokenizers", "safetensors", "PIL", "rapidocr", "rapidocr_onnxruntime",
              "onnxruntime", "cv2", "matplotlib", "web3", "eth_tester", "eth_account", "vyper")
# The heavy part of the gateway's start, imported only once its port listens.
AFTER_LISTEN = ("sqlalchemy", "numpy", "gpupool.gateway.web.app", "gpupool.gateway.store",
                "gpupool.gateway.edge.openai_api", "gpupool.ledger.sql")


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"],
                         check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_gateway_command_listens_before_importing_the_app() -> None:
    loaded = loaded_after("import gpupool.cli, gpupool.gateway.web.server")
    assert "gpupool.gateway.web.server" in loaded
    assert not loaded & set(AFTER_LISTEN), sorted(loaded & set(AFTER_LISTEN))


def test_the_whole_gateway_imports_no_ml_or_evm_library() -> None:
    loaded = loaded_after("import gpupool.cli, gpupool.gateway.web.server, uvicorn\n"
                          "import gpupool.gateway.web.app, gpupool.gateway.store, gpupool.ledger")
    assert "gpupool.gateway.web.app" in loaded and "sqlalchemy" in loaded  # the check saw the real gateway
    heavy = {m for m in loaded if m.split(".")[0] in ML_AND_EVM}
    assert not heavy, sorted(heavy)
