"""Checks of the text a user hands over (passages, titles, questions, answers, documents) before anything trains on
it or scores it.

Refused, never stripped: NULs and other control characters (a file that is binary or damaged), terminal escape
sequences, lone surrogates (JSON `\\ud800` escapes: not Unicode text, the tokenizer raises on them) and text with
nothing visible in it (zero-width or format characters only). Format characters inside visible text are kept:
zero-width joiners and non-joiners are part of Persian, Hindi or emoji text. Whitespace controls (tab, newlines,
carriage return, vertical tab, form feed, as from Windows files or `pdftotext`) are text.
"""

from __future__ import annotations

import re

from .plans import strip_invisible

# Control characters (Unicode category Cc: U+0000-001F, U+007F-009F) but the whitespace ones, and lone surrogates;
# a terminal escape sequence starts with one (ESC, U+001B).
_BAD = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def text_defect(text: str) -> str | None:
    """What makes `text` unusable (a phrase naming the character and where it is), or None when it is usable."""
    bad = _BAD.search(text)
    if bad is not None:
        ch, i = bad.group(), bad.start()
        if "\ud800" <= ch <= "\udfff":
            return f"a lone surrogate (U+{ord(ch):04X}) at character {i}, which is not Unicode text"
        what = "a terminal escape sequence (ESC, U+001B)" if ch == "\x1b" else f"a control character (U+{ord(ch):04X})"
        return f"{what} at character {i}"
    if not strip_invisible(text).strip():
        return "no visible character (only whitespace, zero-width or format characters)"
    return None


def special_token_text(text: str, tokenizer) -> str | None:
    """The first of the tokenizer's special tokens (`<|im_end|>`, `<|endoftext|>`...) written in `text`, or None.
    Such text would close a chat turn or end the sequence where a chat template is rendered and tokenised as one
    string (as TRL renders the policy's prompts)."""
    tokens = [t for t in getattr(tokenizer, "all_special_tokens", ()) if isinstance(t, str) and t]
    return next((t for t in tokens if t in text), None)
