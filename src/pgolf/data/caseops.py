"""CaseOps (lossless_caps_caseops_v1): a bijective case transform applied before tokenizing.

Over each maximal run of ASCII letters (a "word"):
  lowercase        -> unchanged
  ALLCAPS (>= 2)   -> ALLCAPS + lowercase            "NASA"   -> A"nasa"
  Titlecase / "A"  -> TITLE + lowercase              "Launch" -> T"launch"
  anything else    -> [TITLE] first letter, then CAPNEXT before every later capital
                                                     "McDo"   -> T"mc"C"do", "iPod" -> "i"C"pod"
A literal operator character in the text is written ESC + that character. The operators are the
private-use characters U+E001..U+E004, user-defined pieces of the CaseOps SentencePiece model, so a
tokenizer reuses lowercase pieces across case variants. val_bpb stays charged on the original text:
`original_bytes` gives each token's share of the untransformed UTF-8 bytes (the byte sidecar).
"""
from __future__ import annotations

from typing import Iterable

from pgolf.errors import InputError

NAME = "lossless_caps_caseops_v1"
TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)
_OPS = frozenset(OPERATORS)


def _letter(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z"


def _upper(ch: str) -> bool:
    return "A" <= ch <= "Z"


def _word(word: str) -> str:
    low = word.lower()
    if word == low:
        return word
    if len(word) >= 2 and word == word.upper():
        return ALLCAPS + low
    if word[1:] == low[1:]:  # only the first letter is a capital (also one-letter words)
        return TITLE + low
    out = [TITLE + low[0] if _upper(word[0]) else low[0]]
    out += [CAPNEXT + c.lower() if _upper(c) else c for c in word[1:]]
    return "".join(out)


def encode(text: str) -> str:
    """The CaseOps form of `text`."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if _letter(ch):
            j = i + 1
            while j < n and _letter(text[j]):
                j += 1
            out.append(_word(text[i:j]))
            i = j
            continue
        out.append(ESC + ch if ch in _OPS else ch)
        i += 1
    return "".join(out)


class _Reader:
    """The decoder's state, shared by `decode` and `original_bytes` (which reads piece by piece)."""

    def __init__(self) -> None:
        self.escape = False
        self.mode: str | None = None  # TITLE or ALLCAPS waiting for a word's first letter
        self.capnext = False
        self.in_word = False
        self.allcaps = False

    def char(self, ch: str) -> str | None:
        """The original character `ch` stands for, or None for an operator."""
        if self.escape:
            if ch not in _OPS:
                raise ValueError(f"ESC before {ch!r} (only an operator character is escaped)")
            self.escape = self.in_word = self.allcaps = False
            return ch
        if ch == ESC:
            if self.mode or self.capnext:
                raise ValueError("a case operator is not followed by a letter")
            self.escape = True
            return None
        if ch in (TITLE, ALLCAPS):
            if self.mode or self.capnext or self.in_word:
                raise ValueError("TITLE/ALLCAPS inside a word or after another operator")
            self.mode = ch
            return None
        if ch == CAPNEXT:
            if self.capnext or self.mode or not self.in_word:
                raise ValueError("CAPNEXT outside a word or twice")
            self.capnext = True
            return None
        if _letter(ch):
            if _upper(ch):
                raise ValueError(f"capital {ch!r} in CaseOps text (capitals are written with operators)")
            start = not self.in_word
            if start:
                self.allcaps = self.mode == ALLCAPS
                up = self.mode is not None
            else:
                up = self.allcaps or self.capnext
            self.mode, self.capnext, self.in_word = None, False, True
            return ch.upper() if up else ch
        if self.mode or self.capnext:
            raise ValueError("a case operator is not followed by a letter")
        self.in_word = self.allcaps = False
        return ch

    def finish(self) -> None:
        if self.escape or self.mode or self.capnext:
            raise ValueError("the text ends inside an operator")


def decode(text: str, where: str = "CaseOps text") -> str:
    """The original text of a CaseOps string; malformed input -> InputError naming `where`."""
    r = _Reader()
    out = []
    try:
        for ch in text:
            c = r.char(ch)
            if c is not None:
                out.append(c)
        r.finish()
    except ValueError as e:
        raise InputError(f"{where}: not valid {NAME} ({e})") from None
    return "".join(out)


def original_bytes(surfaces: Iterable[str], where: str = "CaseOps text") -> list[int]:
    """Per piece (the surfaces of a tokenization, in order), the UTF-8 bytes of the original text it
    stands for: operators count 0, an escaped operator its own 3 bytes, a letter 1."""
    r = _Reader()
    counts = []
    try:
        for surface in surfaces:
            n = 0
            for ch in surface:
                c = r.char(ch)
                if c is not None:
                    n += len(c.encode("utf-8"))
            counts.append(n)
        r.finish()
    except ValueError as e:
        raise InputError(f"{where}: not valid {NAME} ({e})") from None
    return counts


def check_tokenizer(sp, where: str) -> None:
    """The CaseOps operators must be single pieces of the tokenizer (user-defined symbols)."""
    missing = [f"U+{ord(op):04X}" for op in OPERATORS if sp.piece_to_id(op) == sp.unk_id()]
    if missing:
        raise InputError(f"{where}: not a CaseOps tokenizer (no piece for {', '.join(missing)}); "
                         "--caseops needs e.g. fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model")
