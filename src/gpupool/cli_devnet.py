"""`gpupool devnet`: a local network (one gateway, providers, checkers) served until Ctrl-C.

The processes are started by `devnet.Network`, as the integration tests start them; this
command adds the terminal side: progress, the banner with the development key, the pointer
file other commands find the running devnet by (cli_support), stopping what an earlier
devnet left running, and a clean stop on Ctrl-C, kill or SIGHUP.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from gpupool import config, logs
from gpupool.cli_support import (
    fail,
    pointer_path,
    remove_devnet_pointer,
    running_devnet,
    write_devnet_pointer,
)


def devnet(
    port: Annotated[int, typer.Option(help="gateway port (0: any free one)")] = 8000,
    providers: Annotated[int, typer.Option(min=1, help="number of provider processes")] = 3,
    checkers: Annotated[int, typer.Option(min=0, help="number of checker processes (audits)")] = 2,
    home: Annotated[Optional[Path], typer.Option(help="where keys, database and logs go "
                                                 "(default: ~/.gpupool/devnet)")] = None,
    echo_only: Annotated[bool, typer.Option("--echo-only", help="serve only the no-model echo backend")] = False,
) -> None:
    """Start a local network (1 gateway, N providers, checkers) and serve until Ctrl-C."""
    from gpupool.devnet import Network, NetworkError, stale_processes, stop_stale
    from gpupool.devnet_setup import (
        banner,
        checker_serve,
        default_serve,
        dev_price_args,
        prepare_models,
    )

    logs.quiet_third_parties()  # before transformers is imported: no progress bars while preparing models
    home = home or config.default_home() / "devnet"
    if running_devnet():
        raise fail(f"a devnet is already running (see {pointer_path()}); stop it with Ctrl-C first")
    stale = stale_processes(_pointer())
    if stale:
        typer.echo(f"a devnet that is gone left {len(stale)} processes running (pids "
                   f"{', '.join(map(str, stale))}, from {pointer_path()}): stopping them")
        stop_stale(stale)
    if not echo_only:
        prepare_models(progress=True)
    serve_list = ["echo=echo:chat"] if echo_only else default_serve()
    stop = serving = False

    def on_signal(_sig: int, _frame: object) -> None:
        # Ctrl-C, kill, or the terminal closing (SIGHUP): stop everything this devnet started.
        nonlocal stop
        stop = True
        if not serving:
            raise _Interrupted()  # still starting: stop waiting for models now

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    net = Network(home, die_with_parent=True)
    names = [f"checker-{i}" for i in range(checkers)]
    net.checker_names += [n for n in names if n not in net.checker_names]  # the gateway admits these
    try:
        typer.echo(f"starting gateway on 127.0.0.1:{port} (logs in {home / 'logs'})")
        url = net.start_gateway(port=port)
        for _ in range(providers):
            net.start_provider(serve_list, extra=dev_price_args(serve_list))
        for name in names:
            net.start_checker(checker_serve(serve_list), name=name)
        # Written now, not only once all is up: a devnet killed while models load is found next time.
        write_devnet_pointer({"home": str(home), "children": net.pids()})
        what = "echo providers" if echo_only else "providers (loading models)"
        typer.echo(f"starting {providers} {what} and {checkers} checkers...")
        net.wait_for_models({s.split('=')[0]: providers for s in serve_list}, progress=True)
        net.wait_for_checkers(checkers, progress=True)
        key = net.dev_key()
        pointer = write_devnet_pointer({"home": str(home), "db": net.db, "url": url, "children": net.pids(),
                                        "admin_token": net.admin_token, "key_file": str(net.key_file)})
        typer.echo(banner(url, key, echo_only, admin_token=net.admin_token, checkers=checkers,
                          providers=providers, pointer=pointer))
        serving = True
        while not stop:
            dead = [p for p in net.providers + net.checkers + [net.gateway] if p and not p.alive()]
            if dead:
                typer.echo(f"{dead[0].name} exited unexpectedly:\n{dead[0].log_tail()}", err=True)
                break
            time.sleep(0.5)
    except _Interrupted:
        pass
    except (NetworkError, httpx_errors()) as exc:
        raise fail(str(exc)) from None
    finally:
        serving = True  # a second signal while stopping only sets the flag
        remove_devnet_pointer()
        _say("stopping: draining providers and checkers, then the gateway...")
        net.stop()
        _say("stopped.")


class _Interrupted(Exception):
    """A signal arrived while the devnet was still starting."""


def _say(line: str) -> None:
    """Print, unless the terminal is gone (SIGHUP): stopping the children must not depend on it."""
    try:
        typer.echo(line)
    except OSError:
        pass


def _pointer() -> dict[str, Any]:
    """The devnet pointer as it is on disk, whether or not its devnet is alive."""
    try:
        info = json.loads(pointer_path().read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def httpx_errors() -> type[Exception]:
    import httpx

    return httpx.HTTPError
