#!/usr/bin/env python3
"""Drives a running bitscale-engine with the official `openai` client.

Usage: openai_client.py BASE_URL MODEL
Exits 0 when every check passes; prints what failed otherwise.
"""
import sys

import openai


def main() -> int:
    base, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)

    models = client.models.list()
    assert [m.id for m in models.data] == [model], models

    c = client.completions.create(model=model, prompt="a", max_tokens=3, temperature=0)
    assert c.choices[0].finish_reason == "length", c
    assert c.usage.completion_tokens == 3, c.usage
    assert len(c.choices[0].text) > 0

    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0, seed=1
    )
    assert chat.choices[0].message.role == "assistant", chat
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    pieces, usage, reasons = [], None, []
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert reasons == ["length"], reasons
    assert usage is not None and usage.completion_tokens == 4, usage
    assert "".join(pieces), pieces

    text = "".join(
        ch.choices[0].text
        for ch in client.completions.create(model=model, prompt="a", max_tokens=3, temperature=0, stream=True)
        if ch.choices
    )
    assert text == c.choices[0].text, (text, c.choices[0].text)

    try:
        client.completions.create(model=model, prompt="a", temperature=5)
        raise AssertionError("temperature=5 accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "temperature", e.body

    try:
        client.completions.create(model="nope", prompt="a")
        raise AssertionError("unknown model accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "model", e.body

    print("openai client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
