"""`gpupool ledger ...`: verify the journal, deposit, withdraw, show a balance, deploy the EVM contract.

    gpupool ledger verify --window 600                  # replay the journal; exit 1 and list problems
    gpupool ledger deposit alice 5000000                # credit a client account, in µcr
    gpupool ledger withdraw provider:gp... 1000000      # pay withdrawable earnings out
    gpupool ledger balance devnet --ucr                 # the running devnet's ledger by default
    gpupool ledger deploy --rpc http://127.0.0.1:8545   # print the --ledger URL gateways use

All but `deploy` open the ledger itself, not a gateway: `--ledger URL`, else
GPUPOOL_GATEWAY_LEDGER, else the gateway's database (cli_support.ledger_url).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from gpupool import config
from gpupool.cli_support import (
    HELP,
    credits,
    fail,
    friendly,
    ledger_url,
    require_existing,
    say_database,
)

ledger_app = typer.Typer(help="The ledger: verify, deposit, withdraw, balance, deploy the EVM contract.",
                         no_args_is_help=True, rich_markup_mode=None, context_settings=HELP)

LedgerOpt = Annotated[Optional[str], typer.Option("--ledger", help="ledger URL (default: the gateway's "
                                                  "database): sqlite:///…, postgresql://…, evm+http://…?contract=0x…")]


def _with_ledger(flag: str | None, call: Callable[[Any], Any], create: bool = False) -> Any:
    """Open the ledger (see cli_support.ledger_url), say which, run one call, close it."""
    from gpupool.ledger.backends import open_ledger
    from gpupool.ledger.postings import LedgerError

    url, origin = ledger_url(flag)
    say_database(url, origin, "ledger")

    async def go() -> Any:
        ledger = await open_ledger(url)
        try:
            return await call(ledger)
        finally:
            await ledger.close()

    try:
        if not create:
            require_existing(url)
        return asyncio.run(go())
    except LedgerError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:
        message = friendly(exc)
        if message is None:
            raise
        raise fail(message) from None


@ledger_app.command("verify")
def ledger_verify(ledger: LedgerOpt = None,
                  window: Annotated[float, typer.Option(
                      min=0, help="the audit window promised to providers and checkers (s): earnings released "
                      "sooner are reported (0: only each release's own recorded window)")] = 0.0) -> None:
    """Check the ledger: SQL replays the hash-chained journal (entries and their times) and checks the
    paid-once records and release times; EVM checks the contract's code, coin and holding floor."""
    problems = _with_ledger(ledger, lambda led: led.verify(min_window_s=window))
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo("ledger verified: no money created or lost, history intact, each receipt paid once, "
               "no earnings released early")


@ledger_app.command("deposit")
def ledger_deposit(account: str, amount: Annotated[int, typer.Argument(help="µcr (1 credit = 1,000,000)")],
                   key: Annotated[Optional[str], typer.Option(help="idempotency key (repeat-safe)")] = None,
                   ledger: LedgerOpt = None) -> None:
    """Credit a client account (after it paid you): its API keys can then spend it."""
    import uuid

    from gpupool.ledger.postings import account_for, client

    acct = account_for(account)

    async def go(led: Any) -> int:
        await led.deposit(key or f"deposit:{uuid.uuid4().hex}", acct, amount)
        return await led.balance(client(acct))

    typer.echo(f"account {acct!r}: balance {credits(_with_ledger(ledger, go, create=True))}")


@ledger_app.command("withdraw")
def ledger_withdraw(account: Annotated[str, typer.Argument(help="a ledger account, e.g. provider:gp… (withdrawable "
                                                           "earnings), client:NAME, checker:ID or gateway:fees")],
                    amount: Annotated[int, typer.Argument(help="µcr")],
                    key: Annotated[Optional[str], typer.Option(help="idempotency key (repeat-safe)")] = None,
                    ledger: LedgerOpt = None) -> None:
    """Pay money out of the network (the operator records a payout; on EVM the contract sends the coin)."""
    import uuid

    async def go(led: Any) -> int:
        await led.withdraw(key or f"withdraw:{uuid.uuid4().hex}", account, amount)
        return await led.balance(account)

    typer.echo(f"{account}: {credits(_with_ledger(ledger, go))} left")


@ledger_app.command("balance")
def ledger_balance(account: Annotated[str, typer.Argument(help="a client account (a key's name, e.g. devnet), "
                                                          "or a full ledger account such as provider:gp…")],
                   ledger: LedgerOpt = None,
                   ucr: Annotated[bool, typer.Option("--ucr", help="print only the number, in µcr")] = False) -> None:
    """Show an account's balance, in credits and µcr (1 credit = 1,000,000 µcr)."""
    from gpupool.ledger.postings import account_for, client

    name = account if ":" in account else client(account_for(account))

    async def go(led: Any) -> int | None:
        balance = await led.balance(name)
        if balance == 0 and name not in await led.balances():
            return None
        return balance

    balance = _with_ledger(ledger, go)
    if balance is None:
        raise fail(f"no such account {name!r} in this ledger (a client's account appears with its first "
                    "deposit; `gpupool keys list` shows which account each key spends from)")
    typer.echo(f"{balance}" if ucr else f"{name}: {credits(balance)}")


# The contract's floor under audit windows: the gateway's default window, so an owner cannot
# release earnings before checkers had the time the docs promise to contest them.
DEFAULT_MIN_DELAY_S = int(config.GatewaySettings.__dataclass_fields__["audit_window_s"].default)


@ledger_app.command("deploy")
def ledger_deploy(rpc: Annotated[str, typer.Option(help="the chain's JSON-RPC URL")] = "http://127.0.0.1:8545",
                  private_key: Annotated[Optional[str], typer.Option(
                      envvar="GPUPOOL_EVM_PRIVATE_KEY", help="deployer key (default: the node's first account)")]
                  = None,
                  min_delay: Annotated[int, typer.Option(
                      min=0, help="seconds (chain time) earnings stay held and stakes unbond at least, whatever "
                      "the owner asks later; fixed for the contract's life (default: the gateway's audit window)")]
                  = DEFAULT_MIN_DELAY_S) -> None:
    """Deploy the ledger contract (Vyper, compiled here) and print the --ledger URL gateways use."""
    from gpupool.ledger.evm import deploy

    try:
        address = asyncio.run(deploy(rpc, private_key, min_delay=min_delay))
    except Exception as exc:
        message = friendly(exc)
        if message is None:
            raise
        raise fail(f"{message} (is the chain's node running at {rpc}?)") from None
    typer.echo(f"deployed the gpupool ledger contract at {address} (earnings held at least {min_delay} s)")
    typer.echo(f"gateways: gpupool gateway --ledger 'evm+{rpc}?contract={address}'")
