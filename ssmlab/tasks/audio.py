"""Spoken digits: raw waveforms of "zero" to "nine", synthesised with espeak-ng, in the manner of SC09.

SC09 (the ten digits of Speech Commands, arXiv 1804.03209) is the raw-audio benchmark of
S4 and SaShiMi (arXiv 2202.09729); it cannot be downloaded here, so this task makes a set
like it with Debian's ``espeak-ng`` speech synthesiser.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ssmlab.registry import register
from ssmlab.tasks.base import Split, Task
from ssmlab.tasks.sources import PIP_DATA, MissingSourceError, debian_program

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 16000
# English accents of espeak-ng (its own voices, not the MBROLA ones, which need another package).
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
# Voice variants: seven male, four female and the unmodified voice.
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
# A speaker is one (voice, variant); every tenth goes to validation, the next to test.
SPEAKERS = tuple((v, x) for v in VOICES for x in VARIANTS)
SPEED_RANGE = (110, 200)  # words per minute
PITCH_RANGE = (20, 80)  # espeak-ng's 0-99 scale


def speakers(split: str) -> tuple[tuple[str, str], ...]:
    """The (voice, variant) speakers of ``split``: disjoint across splits (78/9/9 of the 96)."""
    slot = {"train": lambda k: k % 10 < 8, "val": lambda k: k % 10 == 8, "test": lambda k: k % 10 == 9}[split]
    return tuple(s for k, s in enumerate(SPEAKERS) if slot(k))


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return x
    try:
        from scipy.signal import resample_poly
    except ImportError as exc:
        raise MissingSourceError(f"spoken-digits: resampling needs scipy; install it with: {PIP_DATA}") from exc
    g = math.gcd(SAMPLE_RATE, rate)
    return resample_poly(x, SAMPLE_RATE // g, rate // g)


def synthesise(word: str, voice: str, variant: str, speed: int, pitch: int, *, program: str = "espeak-ng"
               ) -> np.ndarray:
    """One utterance of ``word`` as float64 samples in [-1, 1] at 16 kHz.

    espeak-ng writes a WAV file to stdout (mono 16-bit at 22050 Hz); it is read with the
    ``wave`` module and resampled to 16 kHz with ``scipy.signal.resample_poly`` (320/441,
    a polyphase filter).
    """
    name = voice + (f"+{variant}" if variant else "")
    wav = subprocess.run([program, "-v", name, "-s", str(speed), "-p", str(pitch), "--stdout", word],
                         capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        # Written to a pipe, the header's frame count is a placeholder: read to the end instead.
        frames = w.readframes(len(wav))
    if width != 2 or channels != 1:
        raise RuntimeError(f"espeak-ng wrote {channels} channels of {8 * width}-bit samples; expected mono 16-bit")
    return _resample(np.frombuffer(frames, dtype="<i2") / 32768.0, rate)


def _trim(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """``x`` without its leading and trailing near-silence (below ``threshold`` of the peak)."""
    loud = np.flatnonzero(np.abs(x) > threshold * max(np.abs(x).max(), 1e-9))
    return x[loud[0]: loud[-1] + 1] if len(loud) else x


@register("task", "spoken-digits", description="Spoken digits 'zero'..'nine' as raw 16 kHz audio (SC09-like, "
          "espeak-ng)", paper="2202.09729", source="debian:espeak-ng", size="2048/256/256 (option)",
          seq_len="16000", metric="accuracy")
class SpokenDigits(Task):
    """Classify a spoken digit from its raw waveform, like SC09 (arXiv 1804.03209) as S4 and
    SaShiMi (arXiv 2202.09729) use it, with the speech synthesised by ``espeak-ng``.

    Each example is one word, "zero" to "nine" (10 classes, balanced), spoken by one of 96
    synthetic speakers (``SPEAKERS``: 8 English accents x 12 voice variants) at a speed
    of 110-200 words per minute and a pitch of 20-80, both uniform. Speakers are
    disjoint across splits (``speakers(split)``), as SC09's are, so the test split
    measures generalisation to unseen voices. The utterance is synthesised at 22050 Hz,
    resampled to 16 kHz (``synthesise``), trimmed of silence at both ends, and placed at
    a uniformly random offset in a one-second frame of 16000 zeros (cropped about its
    centre if longer).

    Inputs (N, 16000, 1) float32 in [-1, 1]; targets (N,). Synthesis takes about 20 ms an
    utterance on one core (subprocesses run in parallel), so splits are cached on disk.
    Defaults: n_train=2048, n_val=256, n_test=256 (SC09 has about 31000/3600/4100).
    """

    head = "classify"
    cached = True
    seq_len = SAMPLE_RATE

    def check_source(self):
        return debian_program(self.registry_name, "espeak-ng", "espeak-ng")

    def model_options(self):
        return {"input_dim": 1, "n_classes": len(DIGITS)}

    def _generate(self, split, n, generator):
        program = self.check_source()
        pool = speakers(split)
        labels = torch.arange(n) % len(DIGITS)
        labels = labels[torch.randperm(n, generator=generator)]
        who = torch.randint(0, len(pool), (n,), generator=generator).tolist()
        speeds = torch.randint(SPEED_RANGE[0], SPEED_RANGE[1] + 1, (n,), generator=generator).tolist()
        pitches = torch.randint(PITCH_RANGE[0], PITCH_RANGE[1] + 1, (n,), generator=generator).tolist()
        offsets = torch.rand(n, generator=generator, dtype=torch.float64).tolist()

        def one(i: int) -> np.ndarray:
            voice, variant = pool[who[i]]
            return _trim(synthesise(DIGITS[labels[i]], voice, variant, speeds[i], pitches[i], program=program))

        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as executor:
            clips = list(executor.map(one, range(n)))
        inputs = torch.zeros(n, SAMPLE_RATE, 1)
        for i, clip in enumerate(clips):
            if len(clip) > SAMPLE_RATE:
                start = (len(clip) - SAMPLE_RATE) // 2
                clip = clip[start:start + SAMPLE_RATE]
            at = int(offsets[i] * (SAMPLE_RATE - len(clip) + 1))
            inputs[i, at:at + len(clip), 0] = torch.from_numpy(clip).float()
        return Split(inputs, labels)
