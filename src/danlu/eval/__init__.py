"""Evaluation: each suite a run-folder stage, fingerprinted on the model folder and the data.

    danlu.eval.ppl.run_ppl(model, out, PplConfig(...))            held-out loss / ppl / bits per byte per source
    danlu.eval.mcq.run_mcq(model, out, McqConfig(...))            C-Eval / CMMLU / MMLU, letter + cloze scores
    danlu.eval.gen.run_gen(model, out, GenConfig(...))            SFT test sets: BLEU, ROUGE, EM, label accuracy
    danlu.eval.judge.run_judge(out, JudgeConfig(...))             LLM judge: pointwise / pairwise (position swap)
    danlu.eval.diagnostics.run_diagnostics(model, out, DiagnosticsConfig(...))   recall, lost facts, P(answer)
    danlu.eval.compare.compare_runs([run_a, run_b, ...], out)     side by side, significance, moved cases
    danlu.eval.stage.evaluate(EvalConfig(...))                    every suite a config lists (`danlu eval CONFIG`)

Configs: danlu.eval.config. Nothing heavy is imported here, so `danlu --help` stays instant.
"""
