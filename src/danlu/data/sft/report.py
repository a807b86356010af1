"""What `data sft` / `data pref` report about the data they kept, per task_type: records, size (tokens with a
tokenizer, else characters), the answer-length distribution and the share of very short answers, so the
"answers of one letter" trap (a multiple-choice set teaching the model to answer in one token) shows before
training. Preference data adds the chosen/rejected length balance (a DPO set whose chosen answers are nearly
always the longer ones teaches length) and KTO's desirable share."""

from __future__ import annotations

from collections import defaultdict

from danlu.data.stats import _dist

MIN_ANSWERS_TO_WARN = 5  # a task_type with fewer answers is too small for a share to mean much


def _short(lengths: list[int], short_max: int) -> dict:
    n = sum(1 for x in lengths if x <= short_max)
    return {"max": short_max, "count": n, "share": round(n / len(lengths), 4) if lengths else 0.0}


class SftStats:
    def __init__(self, unit: str, short_max: int, warn_share: float):
        self.unit, self.short_max, self.warn_share = unit, short_max, warn_share
        self.by = defaultdict(lambda: {"records": 0, "size": 0, "targets": 0, "answers": []})

    def add(self, task_type: str, size: int, answers: list[int], targets: int = 0) -> None:
        s = self.by[task_type]
        s["records"] += 1
        s["size"] += size
        s["targets"] += targets
        s["answers"] += answers

    def report(self) -> tuple[dict, list[str]]:
        total = sum(s["records"] for s in self.by.values())
        per, warnings = {}, []
        for tt, s in sorted(self.by.items(), key=lambda kv: -kv[1]["records"]):
            entry = {"records": s["records"], "share": round(s["records"] / total, 4), self.unit: s["size"]}
            if self.unit == "tokens":
                entry["target_tokens"] = s["targets"]
            entry["answers"] = _dist(s["answers"])
            entry["short_answers"] = short = _short(s["answers"], self.short_max)
            per[tt] = entry
            if len(s["answers"]) >= MIN_ANSWERS_TO_WARN and short["share"] >= self.warn_share:
                warnings.append(f"task_type {tt!r}: {short['share']:.0%} of its {len(s['answers'])} answers are at "
                                f"most {self.short_max} {self.unit} (e.g. one letter): trained alone they teach the "
                                "model to answer that tersely; add the reasoning or mix in longer answers")
        out = {"records": total, "task_types": len(per), self.unit: sum(s["size"] for s in self.by.values())}
        if self.unit == "tokens":
            out["target_tokens"] = sum(s["targets"] for s in self.by.values())
        return {**out, "per_task_type": per}, warnings


class PrefStats:
    def __init__(self, unit: str, short_max: int):
        self.unit, self.short_max = unit, short_max
        self.by = defaultdict(lambda: {"pairs": 0, "kto": 0, "desirable": 0, "size": 0, "chosen": [],
                                       "rejected": [], "chosen_longer": 0, "completions": []})

    def add_pair(self, task_type: str, size: int, chosen: int, rejected: int) -> None:
        s = self.by[task_type]
        s["pairs"] += 1
        s["size"] += size
        s["chosen"].append(chosen)
        s["rejected"].append(rejected)
        s["chosen_longer"] += chosen > rejected

    def add_kto(self, task_type: str, size: int, completion: int, desirable: bool) -> None:
        s = self.by[task_type]
        s["kto"] += 1
        s["size"] += size
        s["desirable"] += desirable
        s["completions"].append(completion)

    def report(self) -> tuple[dict, list[str]]:
        per, warnings = {}, []
        for tt, s in sorted(self.by.items(), key=lambda kv: -(kv[1]["pairs"] + kv[1]["kto"])):
            entry = {"pairs": s["pairs"], "kto": s["kto"], self.unit: s["size"]}
            if s["pairs"]:
                share = s["chosen_longer"] / s["pairs"]
                entry.update(chosen=_dist(s["chosen"]), rejected=_dist(s["rejected"]),
                             chosen_longer_share=round(share, 4),
                             short_chosen=_short(s["chosen"], self.short_max))
                if s["pairs"] >= MIN_ANSWERS_TO_WARN and (share >= 0.9 or share <= 0.1):
                    warnings.append(f"task_type {tt!r}: the chosen answer is the longer one in {share:.0%} of "
                                    f"{s['pairs']} pairs: preference training may learn length, not quality")
            if s["kto"]:
                entry.update(completions=_dist(s["completions"]), desirable_share=round(s["desirable"] / s["kto"], 4))
            per[tt] = entry
        out = {"pairs": sum(s["pairs"] for s in self.by.values()), "kto": sum(s["kto"] for s in self.by.values()),
               "task_types": len(per), self.unit: sum(s["size"] for s in self.by.values())}
        return {**out, "per_task_type": per}, warnings
