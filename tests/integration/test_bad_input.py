"""Every bad client input gets an OpenAI-format error with the right status; nothing breaks."""

from __future__ import annotations

import concurrent.futures as cf

import openai
import pytest

from gpupool.devnet import Network
from tests.integration.conftest import client_for, raw
from tests.openai_schemas import validate

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello there"}]}


def assert_error(resp, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    validate(body, "ErrorResponse")
    if code is not None:
        assert body["error"]["code"] == code, body
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


def test_client_errors_have_openai_shape_and_status(echo_net: Network) -> None:
    key = echo_net.dev_key()
    # 401: no key, a wrong key
    assert_error(raw(echo_net, "POST", "/v1/chat/completions", json=CHAT), 401, "invalid_api_key")
    assert_error(raw(echo_net, "POST", "/v1/chat/completions", key="gp-wrong", json=CHAT), 401, "invalid_api_key")
    # 404: unknown model
    err = assert_error(raw(echo_net, "POST", "/v1/chat/completions", key=key, json={**CHAT, "model": "nope"}),
                       404, "model_not_found", "model")
    assert "nope" in err["message"]
    # 400: malformed JSON, missing field, out-of-range value, unsupported n, wrong task
    assert_error(raw(echo_net, "POST", "/v1/chat/completions", key=key, content=b"{not json",
                     headers={"content-type": "application/json"}), 400)
    assert_error(raw(echo_net, "POST", "/v1/chat/completions", key=key, json={"model": "echo"}), 400,
                 param="messages")
    assert_error(raw(echo_net, "POST", "/v1/chat/completions", key=key, json={**CHAT, "temperature": 7}), 400,
                 param="temperature")
    assert_error(raw(echo_net, "POST", "/v1/chat/completions", key=key, json={**CHAT, "n": 3}), 400, param="n")
    assert_error(raw(echo_net, "POST", "/v1/embeddings", key=key, json={"model": "echo", "input": "x"}), 400,
                 param="model")
    assert_error(raw(echo_net, "POST", "/v1/embeddings", key=key, json={"model": "echo-embed", "input": []}), 400,
                 param="input")
    # 413: body over the limit (4 MiB default), with and without a content-length header
    big = b'{"model": "echo", "messages": [{"role": "user", "content": "' + b"a" * (5 << 20) + b'"}]}'
    assert_error(raw(echo_net, "POST", "/v1/chat/completions", key=key, content=big,
                     headers={"content-type": "application/json"}), 413, "request_too_large")

    def chunked():
        for _ in range(6):
            yield b"x" * (1 << 20)

    assert_error(raw(echo_net, "POST", "/v1/chat/completions", key=key, content=chunked(),
                     headers={"content-type": "application/json"}), 413, "request_too_large")
    # 404 for unknown routes, still in OpenAI's format
    assert_error(raw(echo_net, "GET", "/v1/nothing-here", key=key), 404)

    # And the gateway still serves the official client afterwards.
    out = client_for(echo_net).chat.completions.create(**CHAT)
    assert out.choices[0].message.content == "hello there"


def test_official_client_raises_typed_errors(echo_net: Network) -> None:
    client = client_for(echo_net)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        client_for(echo_net, key="gp-bad").models.list()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="echo", messages=[])


def test_no_provider_is_503_and_no_capacity_is_429(network: Network) -> None:
    network.start_gateway()
    solo = network.start_provider(["solo=echo:chat?delay_ms=300"], max_concurrency=1,
                                  extra=["--max-queue", "0"])
    network.wait_for_models({"solo": 1}, timeout=60)
    client = client_for(network)
    msgs = [{"role": "user", "content": "one two three"}]

    # 429: one slot, no queue, several requests at once -> the extra ones find no capacity.
    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client.chat.completions.create, model="solo", messages=msgs) for _ in range(4)]
        outcomes = []
        for f in futures:
            try:
                f.result()
                outcomes.append("ok")
            except openai.RateLimitError as exc:
                assert exc.body["code"] == "no_capacity"  # type: ignore[index]
                outcomes.append("429")
    assert "ok" in outcomes and "429" in outcomes, outcomes

    # 504: the client's deadline is shorter than the work.
    resp = raw(network, "POST", "/v1/chat/completions", key=network.dev_key(),
               json={"model": "solo", "messages": msgs}, headers={"x-gpupool-timeout": "0.2"})
    assert_error(resp, 504, "timeout")

    # 503: the model is known but its only provider is gone.
    network.kill_provider(solo)
    solo.popen.wait(10)
    for _ in range(100):
        if not network.health()["providers"]:
            break
        import time

        time.sleep(0.05)
    resp = raw(network, "POST", "/v1/chat/completions", key=network.dev_key(), json={"model": "solo", "messages": msgs})
    assert_error(resp, 503, "no_provider")
