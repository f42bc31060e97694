"""Gas of on-chain batch settlement: receipts per transaction and gas per receipt, by batch size.

    .venv/bin/python bench/ledger/evm.py            # in-process chain (py-evm)
    .venv/bin/python bench/ledger/evm.py --rpc http://127.0.0.1:8545   # a real node, e.g. Anvil

Prints a table and writes bench/results/ledger_evm.json. Gas is the EVM's own count, so
it is the same on any chain running the same fork; only its price differs.
`run_evm_bench(sizes, rpc)` is what bench/ledger/run.py can call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from gpupool.ledger.evm import EvmLedger, deploy
from gpupool.ledger.settlement_key import SettlementKey, signed_charge

RESULTS = Path(__file__).resolve().parents[1] / "results" / "ledger_evm.json"


async def run_evm_bench(sizes: list[int], rpc: str | None = None, providers: int = 4) -> list[dict[str, Any]]:
    """One fresh contract; per size, one settle_batch of `size` signed receipts over `providers` providers."""
    url = f"evm+{rpc}?contract={await deploy(rpc, min_delay=0)}" if rpc else "evm+tester://"
    led = await EvmLedger.open(url)
    keys = {f"gp{i}": SettlementKey.generate() for i in range(providers)}
    for name, key in keys.items():
        await led.register_provider(name, key.address, key.sign_registration(led.address, led.chain_id, name))
    total = sum(sizes) * 2_000 + providers
    await led.deposit("bench:dep", "client", total)
    await led.hold("bench:tab", "client", total)
    names = sorted(keys)
    # Warm-up batch: the contract's first batch pays one-off storage (counters, each provider's
    # first balance); the table shows the steady state a running gateway sees.
    await led.settle_batch("bench:warmup", [signed_charge(keys[n], led.address, led.chain_id, f"warm:{n}", "client",
                                                          n, 1) for n in names], fee_bps=500)
    rows = []
    for size in sizes:
        charges = [signed_charge(keys[names[i % providers]], led.address, led.chain_id, f"s{size}:r{i}", "client",
                                 names[i % providers], 1_000 + i) for i in range(size)]
        before = await led.w3.eth.block_number
        result = await led.settle_batch(f"bench:batch:{size}", charges, fee_bps=500)
        after = await led.w3.eth.block_number
        txs = 0
        gas = 0
        for n in range(before + 1, after + 1):
            block = await led.w3.eth.get_block(n)
            for tx in block["transactions"]:
                txs += 1
                gas += (await led.w3.eth.get_transaction_receipt(tx))["gasUsed"]
        assert len(result.paid) == size, result.rejected
        rows.append({"receipts": size, "transactions": txs, "receipts_per_tx": size / txs, "gas": gas,
                     "gas_per_receipt": round(gas / size)})
    await led.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpc", help="JSON-RPC URL of a node (default: in-process chain)")
    parser.add_argument("--sizes", default="1,10,100,256")
    args = parser.parse_args()
    rows = asyncio.run(run_evm_bench([int(s) for s in args.sizes.split(",")], args.rpc))
    print(f"{'receipts':>9} {'txs':>4} {'receipts/tx':>12} {'gas':>10} {'gas/receipt':>12}")
    for r in rows:
        print(f"{r['receipts']:>9} {r['transactions']:>4} {r['receipts_per_tx']:>12.0f} {r['gas']:>10} "
              f"{r['gas_per_receipt']:>12}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"chain": args.rpc or "py-evm (eth-tester)", "rows": rows}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
