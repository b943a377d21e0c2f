#!/usr/bin/env python3
"""Reference ("oracle") renderer for the chat-template conformance test.

Renders every CORPUS_DIR/*.jinja template against every conversation in
CONVERSATIONS_JSON exactly as Hugging Face transformers'
`tokenizer.apply_chat_template(..., tokenize=False)` does, so the Rust
(minijinja) renderer can be compared with it byte for byte.

Written against transformers 5.25.0 with Jinja2 3.1.6 (see
oracle-requirements.txt; install with `pip install --no-deps -r ...`).

    python oracle.py CORPUS_DIR CONVERSATIONS_JSON OUT_JSON

CORPUS_DIR/tokens.json (optional) maps a template's base name to
{"bos_token": str|null, "eos_token": str|null}. A null/missing token is not
passed at all, like `tokenizer.special_tokens_map`, which omits unset tokens.
OUT_JSON: {template: {conversation: {"ok": text} | {"error": "Type: msg"}}}.

Set ORACLE_NOW=2026-12-06 (any ISO date/datetime) to make `strftime_now`
deterministic.
"""
import copy
import json
import os
import sys
from datetime import datetime
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no "PyTorch was not found" noise
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers.utils.chat_template_utils as ctu  # noqa: E402

# strftime_now is a closure registered in env.globals that calls
# `datetime.now()`, looking `datetime` up in this module's globals at call time.
# Render kwargs would shadow env.globals in Jinja, but render_jinja_template
# passes kwargs through `_plain_template_data`, which turns a callable into the
# string "<function>" -- so a `strftime_now=` kwarg cannot work. Instead we
# replace the module global `datetime` with a subclass whose now() is fixed;
# everything else in transformers is untouched.
if os.environ.get("ORACLE_NOW"):
    _FIXED_NOW = datetime.fromisoformat(os.environ["ORACLE_NOW"])

    class _FixedDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return _FIXED_NOW if tz is None else _FIXED_NOW.replace(tzinfo=tz)

    ctu.datetime = _FixedDatetime


def render(template, conv, special_tokens):
    # Mirrors PreTrainedTokenizerBase.apply_chat_template (tokenize=False):
    # drop None-valued message keys, special tokens first and overridden by
    # kwargs, then transformers' own render_jinja_template.
    messages = ctu._normalize_chat_messages(copy.deepcopy(conv["messages"]))
    template_kwargs = {**special_tokens, **copy.deepcopy(conv.get("kwargs") or {})}
    rendered, _ = ctu.render_jinja_template(
        conversations=[messages],
        tools=copy.deepcopy(conv.get("tools")),
        documents=copy.deepcopy(conv.get("documents")),
        chat_template=template,
        add_generation_prompt=conv.get("add_generation_prompt", False),
        **template_kwargs,
    )
    return rendered[0]


def main(corpus_dir, conversations_path, out_path):
    corpus = Path(corpus_dir)
    tokens_path = corpus / "tokens.json"
    tokens = json.loads(tokens_path.read_text("utf-8")) if tokens_path.exists() else {}
    conversations = json.loads(Path(conversations_path).read_text("utf-8"))
    out = {}
    for path in sorted(corpus.glob("*.jinja")):
        name = path.name[: -len(".jinja")]
        template = path.read_bytes().decode("utf-8")
        special = {k: v for k, v in (tokens.get(name) or {}).items() if v is not None}
        results = out[name] = {}
        for conv in conversations:
            try:
                results[conv["name"]] = {"ok": render(template, conv, special)}
            except Exception as e:  # noqa: BLE001 - every failure is an expected outcome
                results[conv["name"]] = {"error": f"{type(e).__name__}: {e}"}
    Path(out_path).write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", "utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
