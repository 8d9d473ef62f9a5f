"""Validation: every bad line gets an error naming its line and field; good lines get lengths."""

from __future__ import annotations

import json

import pytest

from ops.models import model_files
from producers.validate import validate_jsonl

MODEL = model_files("minilm")


def line(custom_id: str = "a", text: object = "hello world", **extra: object) -> dict:
    body = {"model": "minilm", "input": text}
    body.update(extra.pop("body", {}))
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body,
            **extra}


def jsonl(*objs: object) -> bytes:
    return b"\n".join(o if isinstance(o, bytes) else json.dumps(o).encode() for o in objs)


def check(data: bytes, **kw: object):
    opts = {"model": MODEL, "served": "minilm", "max_lines": 100, "max_bytes": 10**6}
    opts.update(kw)
    return validate_jsonl(data, **opts)  # type: ignore[arg-type]


def test_max_seq_length_comes_from_the_model_files() -> None:
    """The limit is sentence_bert_config.json's max_seq_length (256), not a constant."""
    assert MODEL.max_seq_length == 256


def test_valid_lines_become_items_with_token_lengths() -> None:
    """Lengths count word pieces plus [CLS] and [SEP]; list inputs keep one length each."""
    result = check(jsonl(line("a", "hello world"), line("b", ["one", "two three"])))
    assert result.errors == []
    assert [i.custom_id for i in result.items] == ["a", "b"]
    assert result.items[0].lengths == [4]
    assert result.items[1].lengths == [3, 4]


@pytest.mark.parametrize(
    ("raw", "code", "needle"),
    [
        (b'{"custom_id": "a", ', "invalid_json", "line 2: malformed JSON"),
        (b"\xff\xfe", "invalid_utf8", "line 2: not valid UTF-8"),
        (b"[1, 2]", "invalid_request", "line 2: expected a JSON object"),
        (jsonl(line("x", body={"input": ""})), "invalid_request", "line 2: body.input"),
        (jsonl(line("x", [])), "invalid_request",
         "line 2: body.input: must be a non-empty text or a list of 1 to 2,048 non-empty "
         "texts; got a list of 0"),
        (jsonl(line("x", 42)), "invalid_request", "line 2: body.input: must be a non-empty "
         "text or a list of 1 to 2,048 non-empty texts; got int"),
        (jsonl(line("x", ["ok", 3])), "invalid_request", "line 2: body.input"),
        (jsonl({"method": "POST", "url": "/v1/embeddings", "body": {"model": "minilm",
                                                                  "input": "x"}}),
         "invalid_request", "line 2: custom_id"),
        (jsonl(line("x", method="GET")), "invalid_request", "line 2: method"),
        (jsonl(line("x", url="/v1/chat/completions")), "invalid_request", "line 2: url"),
        (jsonl(line("x", body={"model": "gpt-4"})), "model_not_found", "line 2: unknown model"),
        (jsonl(line("a")), "duplicate_custom_id", "line 2: custom_id 'a' already used on line 1"),
        (b"\x00\x00", "invalid_json", "line 2: malformed JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json", "line 2: JSON nested too deeply"),
    ],
)
def test_bad_line_is_reported_with_line_and_field(raw: bytes, code: str, needle: str) -> None:
    """A bad second line yields one error whose message names line 2 and the field."""
    result = check(jsonl(line("a"), raw))
    assert [e.code for e in result.errors] == [code]
    assert needle in result.errors[0].message
    assert result.errors[0].line == 2


def test_over_long_input_fails_unless_truncation_is_asked() -> None:
    """An input over max_seq_length is an error naming its tokens; truncate=true cuts it."""
    long_text = "word " * 400
    result = check(jsonl(line("a", long_text)))
    assert result.errors[0].code == "context_length_exceeded"
    assert "body.input has 402 tokens; the model's limit is 256" in result.errors[0].message
    ok = check(jsonl(line("a", long_text, body={"truncate": True})))
    assert ok.errors == [] and ok.items[0].lengths == [256]


def test_job_level_truncate_applies_where_a_line_does_not_say() -> None:
    """`truncate=True` (the job's default) cuts lines that do not set body.truncate; a line's
    own `false` still refuses."""
    long_text = "word " * 400
    result = check(jsonl(line("a", long_text), line("b", long_text, body={"truncate": False})),
                   truncate=True)
    assert [i.custom_id for i in result.items] == ["a"] and result.items[0].lengths == [256]
    assert result.items[0].truncate
    assert [(e.line, e.code) for e in result.errors] == [(2, "context_length_exceeded")]


def test_file_limits() -> None:
    """Empty input, too many lines and too many bytes each fail the whole file."""
    assert check(b"\n\n").errors[0].code == "empty_file"
    many = jsonl(*[line(str(i)) for i in range(5)])
    assert check(many, max_lines=4).errors[0].code == "too_many_lines"
    assert check(many, max_bytes=10).errors[0].code == "file_too_large"


def test_adapter_names_are_checked_when_known() -> None:
    """`minilm:NAME` must name a known adapter when the set of adapters is given."""
    data = jsonl(line("a", body={"model": "minilm:support-v2"}))
    assert check(data, known_adapters={"support-v2": 8}).items[0].adapter == "support-v2"
    bad = check(data, known_adapters={"other": 8})
    assert bad.errors[0].code == "model_not_found" and "support-v2" in bad.errors[0].message


def test_blank_lines_are_ignored_and_numbering_kept() -> None:
    """Blank lines (a trailing newline) are skipped; line numbers stay those of the file."""
    result = check(jsonl(line("a"), b"", line("b", 7)))
    assert result.errors[0].line == 3
