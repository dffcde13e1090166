"""Benchmark: SLOT engine against plain `generate` and a reference-style implementation.

Runs on the bundled model with one ~300-token prompt and 64 new tokens (greedy). Arms:
- plain: `model.generate`, no SLOT.
- engine T=N: `slot_core.generate` with N AdamW steps.
- reference T=5: written the way the SLOT authors' code works: autograd through the head at every
  step with ``loss.backward()`` (so the head weight's gradient is computed too, as in their code,
  where the loaded parameters require gradients), one prompt at a time, then the prompt runs
  again through `model.generate` with delta added by a forward hook on the head.

Repeats are interleaved (every arm once per round) so that machine noise hits all arms alike; the
report gives medians, ratios to plain `generate`, optimisation ms per step and the peak resident
memory above the process's baseline during the arm, sampled every millisecond.

Usage: python bench/engine_speed.py [--rounds 5] [--json OUT]
"""

import argparse
import json
import os
import platform
import statistics
import threading
import time

import torch

import slot_core

PROMPT_WORDS = (
    "Fill in the delivery form below from the customer's e-mail. The e-mail: Dear sales team, "
    "we would like to order forty boxes of A4 copy paper, twelve black toner cartridges for the "
    "office printer, and six ergonomic chairs with adjustable arm rests. Please deliver everything "
    "to our Osaka branch before the end of next month, and send the invoice to the accounts "
    "department. The contact person for the delivery is Ms Tanaka from general affairs, who can be "
    "reached on the branch telephone during office hours. "
)
NEW_TOKENS = 64
ENGINE_STEPS = [0, 1, 3, 5, 10, 20]
LR = 0.01


def build_prompt(tokenizer, target_tokens: int = 300) -> list[dict]:
    text = PROMPT_WORDS
    while slot_core.count_prompt_tokens(tokenizer, [{"role": "user", "content": text}]) < target_tokens:
        text += PROMPT_WORDS
    words = text.split()
    while slot_core.count_prompt_tokens(tokenizer, [{"role": "user", "content": " ".join(words)}]) > target_tokens:
        words.pop()
    return [{"role": "user", "content": " ".join(words) + "\nAnswer as JSON."}]


class PeakRss:
    """Samples this process's resident memory in a thread; reports the peak above the start."""

    def __enter__(self):
        self.baseline = self.peak = _rss_bytes()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.baseline) / 2**20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_plain(model, tokenizer, prompt):
    encoded = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
    with torch.no_grad():
        output = model.generate(**encoded, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                do_sample=False)
    return {"new_tokens": output.shape[1] - encoded["input_ids"].shape[1]}


def run_engine(model, tokenizer, prompt, steps):
    (result,) = slot_core.generate(model, tokenizer, [prompt], slot_core.SlotConfig(steps=steps, lr=LR),
                                   max_new_tokens=NEW_TOKENS, stop=None)
    return {"new_tokens": result.output_tokens, "optimize_ms": result.timings_ms["optimize"]}


def run_reference(model, tokenizer, prompt, steps):
    encoded = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
    input_ids = encoded["input_ids"]
    head = model.get_output_embeddings()

    started = time.perf_counter()
    with torch.no_grad():
        hidden = model.base_model(input_ids=input_ids).last_hidden_state  # [1, seq, hidden]
    delta = torch.zeros(1, 1, hidden.shape[-1], requires_grad=True)
    optimizer = torch.optim.AdamW([delta], lr=LR, weight_decay=1e-8, eps=1e-5)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = head(hidden + delta)  # [1, seq, vocab]
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], input_ids[0, 1:])
        # As in the authors' code: a plain backward() on a model loaded by from_pretrained, whose
        # parameters require gradients, so every step also computes the head weight's gradient.
        loss.backward()
        optimizer.step()
    optimize_ms = (time.perf_counter() - started) * 1000
    # The other arms must see the model as loaded: drop the gradients the steps accumulated.
    model.zero_grad(set_to_none=True)

    frozen = delta.detach()
    handle = head.register_forward_pre_hook(lambda module, args: (args[0] + frozen,))
    try:
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                    do_sample=False)
    finally:
        handle.remove()
    return {"new_tokens": output.shape[1] - input_ids.shape[1], "optimize_ms": optimize_ms}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved repeats of every arm")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()

    model, tokenizer = slot_core.load_model(None, device="cpu")
    prompt = build_prompt(tokenizer)
    prompt_tokens = slot_core.count_prompt_tokens(tokenizer, prompt)

    arms = {"plain generate": lambda: run_plain(model, tokenizer, prompt)}
    for steps in ENGINE_STEPS:
        arms[f"engine T={steps}"] = lambda steps=steps: run_engine(model, tokenizer, prompt, steps)
    arms["reference T=5"] = lambda: run_reference(model, tokenizer, prompt, 5)

    for run in arms.values():  # warm-up: first calls pay for lazy initialisation
        run()

    samples = {name: [] for name in arms}
    for round_index in range(args.rounds):
        for name, run in arms.items():
            with PeakRss() as memory:
                started = time.perf_counter()
                details = run()
                elapsed_ms = (time.perf_counter() - started) * 1000
            samples[name].append({"ms": elapsed_ms, "extra_mib": memory.extra_mib, **details})
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    report = summarise(samples, prompt_tokens, args.rounds)
    print_report(report)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, ensure_ascii=False)


def summarise(samples, prompt_tokens, rounds):
    plain_ms = statistics.median(s["ms"] for s in samples["plain generate"])
    engine5_ms = statistics.median(s["ms"] for s in samples["engine T=5"])
    arms = []
    for name, runs in samples.items():
        median_ms = statistics.median(s["ms"] for s in runs)
        steps = int(name.split("T=")[1]) if "T=" in name else 0
        optimize = [s["optimize_ms"] for s in runs if "optimize_ms" in s]
        arms.append({
            "arm": name,
            "median_ms": round(median_ms, 1),
            "ratio_to_plain": round(median_ms / plain_ms, 3),
            "ratio_to_engine_t5": round(median_ms / engine5_ms, 3),
            "optimize_ms_per_step": round(statistics.median(optimize) / steps, 2) if optimize and steps else None,
            "peak_extra_mib": round(max(s["extra_mib"] for s in runs), 1),
            "new_tokens": runs[-1]["new_tokens"],
        })
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "prompt_tokens": prompt_tokens,
        "new_tokens": NEW_TOKENS,
        "rounds": rounds,
        "arms": arms,
    }


def print_report(report):
    print(f"\n{report['machine']}; prompt {report['prompt_tokens']} tokens, {report['new_tokens']} new tokens, "
          f"median of {report['rounds']} interleaved rounds")
    print(f"{'arm':<16}{'median ms':>11}{'x plain':>9}{'x engine T=5':>14}{'opt ms/step':>13}{'peak +MiB':>11}")
    for arm in report["arms"]:
        per_step = "" if arm["optimize_ms_per_step"] is None else f"{arm['optimize_ms_per_step']:.1f}"
        print(f"{arm['arm']:<16}{arm['median_ms']:>11.1f}{arm['ratio_to_plain']:>9.3f}"
              f"{arm['ratio_to_engine_t5']:>14.3f}{per_step:>13}{arm['peak_extra_mib']:>11.1f}")


if __name__ == "__main__":
    main()
