"""Tokens per second of generation after a prompt of 256, 2048 and 8192 tokens.

For mamba, mamba2 and attention language models of the same width and depth
(each block with the gated MLP): the prompt is consumed in one parallel forward
(prefill, timed separately),
then ``--new-tokens`` tokens are generated one recurrent step at a time. An
SSM's step costs the same at any context; attention's step reads a KV cache
that grows with the context, so its tokens/s fall as the context grows.

    python benchmarks/generation.py [--contexts 256 2048 8192] [--d-model 256] [--n-layers 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ssmlab

MIXERS = {"mamba": {}, "mamba2": {"headdim": 64, "d_state": 64, "chunk_size": 64}, "attention": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 2048, 8192])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=256)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; d_model={args.d_model}, "
          f"n_layers={args.n_layers}, {args.new_tokens} new tokens, median of {args.repeats}\n")
    print(f"{'mixer':<10}{'context':>8}{'prefill (s)':>13}{'tokens/s':>10}{'x ctx ' + str(args.contexts[0]):>14}")
    for name, options in MIXERS.items():
        torch.manual_seed(0)
        model = ssmlab.create_model(name, d_model=args.d_model, n_layers=args.n_layers, vocab_size=args.vocab,
                                    mixer_options=options).eval()
        first = None
        for context in args.contexts:
            prompt = torch.randint(0, args.vocab, (1, context))
            rates, prefills = [], []
            with torch.no_grad():
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    logits, states = model(prompt, return_state=True)
                    prefills.append(time.perf_counter() - start)
                    token = logits[:, -1].argmax(-1)
                    start = time.perf_counter()
                    for _ in range(args.new_tokens):
                        logits, states = model.step(token, states)
                        token = logits.argmax(-1)
                    rates.append(args.new_tokens / (time.perf_counter() - start))
            rate = statistics.median(rates)
            first = first or rate
            print(f"{name:<10}{context:>8}{statistics.median(prefills):>13.3f}{rate:>10.1f}{rate / first:>13.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
