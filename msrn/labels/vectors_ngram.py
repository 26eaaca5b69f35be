"""Hashed character n-gram label vectors: the offline default that needs no file and no download.

Each word is wrapped as `<word>` and cut into character n-grams (3 to 6 characters, plus the
whole wrapped word), as fastText does for subwords. Every n-gram is hashed with BLAKE2b into a
few signed buckets of a `dim`-wide vector (feature hashing), so the result depends only on the
spelling and is identical on every machine and numpy version. A label's vector is the mean of
its words' L2-normalised vectors, L2-normalised again.

These vectors carry spelling similarity only (`motorbike` is near `motorcycle`, `cat` is not
near `dog`): they give every label a distinct, stable input, not its meaning. Use GloVe,
fastText or the sentence encoder when meaning matters.
"""

from __future__ import annotations

import hashlib

import numpy as np

from msrn.errors import MSRNError

NGRAM_DIM = 300
MIN_N, MAX_N = 3, 6
HASHES_PER_NGRAM = 4  # buckets each n-gram touches; more buckets make collisions matter less
_PERSON = b"msrn-ngram-v1"  # hash domain; changing it changes every vector


def word_ngrams(word: str) -> list[str]:
    """The character n-grams of `<word>` (lengths MIN_N..MAX_N) plus the whole wrapped word."""
    wrapped = f"<{word}>"
    grams = [wrapped[i : i + n] for n in range(MIN_N, MAX_N + 1) for i in range(len(wrapped) - n + 1)]
    return grams + [wrapped] if wrapped not in grams else grams


def word_vector(word: str, dim: int = NGRAM_DIM) -> np.ndarray:
    """The L2-normalised signed-hash vector of one word's n-grams (float64, length dim)."""
    vec = np.zeros(dim, dtype=np.float64)
    for gram in word_ngrams(word):
        digest = hashlib.blake2b(gram.encode("utf-8"), digest_size=4 * HASHES_PER_NGRAM, person=_PERSON).digest()
        for k in range(HASHES_PER_NGRAM):
            h = int.from_bytes(digest[4 * k : 4 * k + 4], "little")
            vec[(h >> 1) % dim] += 1.0 if h & 1 else -1.0
    norm = np.linalg.norm(vec)
    return vec / norm if norm > 0 else vec


def ngram_vectors(words_per_label: list[list[str]], names: list[str], dim: int = NGRAM_DIM) -> np.ndarray:
    """C x dim float32 label vectors: the normalised mean of each label's word vectors."""
    if dim < 8:
        raise MSRNError(f"n-gram vectors need at least 8 dimensions, got {dim}")
    out = np.zeros((len(names), dim), dtype=np.float64)
    for row, (name, words) in enumerate(zip(names, words_per_label, strict=True)):
        if not words:
            raise MSRNError(f"label {name!r} has no letters or digits to build an n-gram vector from")
        mean = np.mean([word_vector(w, dim) for w in words], axis=0)
        norm = np.linalg.norm(mean)
        out[row] = mean / norm if norm > 0 else mean
    return out.astype(np.float32)
