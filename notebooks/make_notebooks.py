"""Writes the notebooks of this folder (their code lives here, so it can be reviewed as Python).

    python notebooks/make_notebooks.py            # rewrite the .ipynb files (without outputs)
    python notebooks/make_notebooks.py --execute  # and run them (needs nbclient, pandas, matplotlib)

Run directories are found through LLAMA_ABLATION_DIR / LLAMA_RUN_DIR, defaulting to
runs/core-ablation from the repository root (see docs/ablations.md).
"""
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

FIND = '''import json, os
from pathlib import Path
import pandas as pd
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
%matplotlib inline

root = Path.cwd() if (Path.cwd() / "Cargo.toml").exists() else Path.cwd().parent
ablation = Path(os.environ.get("LLAMA_ABLATION_DIR", root / "runs" / "core-ablation"))
print("ablation directory:", ablation)

def read_metrics(run_dir):
    """One row per logged step or evaluation of a run (metrics.jsonl written by `llama train`)."""
    rows = [json.loads(l) for l in open(Path(run_dir) / "metrics.jsonl") if l.strip()]
    return pd.DataFrame(rows)
'''

def ablation_notebook():
    return new_notebook(cells=[
        new_markdown_cell(
            "# Core ablation: LLaMA's choices against their baselines\n\n"
            "Reads the output of `llama ablate --spec experiments/core-ablation.toml` (one run directory per "
            "variant and seed, plus `summary.csv`) and draws the summary table and the validation curves. "
            "Set `LLAMA_ABLATION_DIR` to read another sweep (CI runs this notebook on the `--quick` sweep)."),
        new_code_cell(FIND),
        new_markdown_cell("## Summary over seeds\n\nFinal and best validation loss as mean ± std over seeds; "
                          "`exceeds_seed_noise` is true when the difference to the first variant (LLaMA) is larger "
                          "than two standard errors of that difference."),
        new_code_cell(
            'summary = pd.read_csv(ablation / "summary.csv")\n'
            'cols = ["variant", "params", "seeds", "final_val_loss_mean", "final_val_loss_std", "best_val_loss_mean",\n'
            '        "perplexity", "delta_vs_baseline", "exceeds_seed_noise", "tokens_per_s", "diverged"]\n'
            'summary[cols].sort_values("final_val_loss_mean").reset_index(drop=True)'),
        new_code_cell(
            'fig, ax = plt.subplots(figsize=(8, 4))\n'
            's = summary.sort_values("final_val_loss_mean")\n'
            'ax.barh(s["variant"], s["final_val_loss_mean"], xerr=s["final_val_loss_std"], color="tab:blue", alpha=0.8)\n'
            'ax.set_xlim(s["final_val_loss_mean"].min() - 0.1, s["final_val_loss_mean"].max() + 0.1)\n'
            'ax.set_xlabel("final validation loss (nats), mean ± std over seeds")\n'
            'ax.invert_yaxis()\n'
            'plt.tight_layout()'),
        new_markdown_cell("## Validation curves (mean over seeds)"),
        new_code_cell(
            'fig, ax = plt.subplots(figsize=(8, 5))\n'
            'for variant in summary["variant"]:\n'
            '    runs = sorted((ablation / variant).glob("seed*"))\n'
            '    frames = [read_metrics(r).dropna(subset=["val_loss"])[["tokens", "val_loss"]] for r in runs]\n'
            '    curve = pd.concat(frames).groupby("tokens")["val_loss"].mean()\n'
            '    ax.plot(curve.index, curve.values, marker="o", ms=3, label=variant)\n'
            'ax.set_xlabel("tokens")\n'
            'ax.set_ylabel("validation loss (nats)")\n'
            'ax.legend(fontsize=8)\n'
            'plt.tight_layout()'),
    ])

def curves_notebook():
    return new_notebook(cells=[
        new_markdown_cell(
            "# Training curves of one run\n\n"
            "Reads a run directory written by `llama train` (`metrics.jsonl`, `status.json`) and draws the train "
            "and validation loss, the learning-rate schedule and the gradient norm. `LLAMA_RUN_DIR` picks the run "
            "(default: the LLaMA variant, seed 0, of the ablation directory)."),
        new_code_cell(FIND + '\nrun = Path(os.environ.get("LLAMA_RUN_DIR", ablation / "llama" / "seed0"))\n'
                      'print("run:", run)\nprint(json.load(open(run / "status.json")))'),
        new_code_cell('m = read_metrics(run)\nm.tail()'),
        new_code_cell(
            'fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))\n'
            't = m.dropna(subset=["train_loss"])\n'
            'v = m.dropna(subset=["val_loss"])\n'
            'axes[0].plot(t["tokens"], t["train_loss"], label="train")\n'
            'axes[0].plot(v["tokens"], v["val_loss"], marker="o", label="validation")\n'
            'axes[0].set_xlabel("tokens"); axes[0].set_ylabel("loss (nats)"); axes[0].legend()\n'
            'axes[1].plot(t["step"], t["lr"]); axes[1].set_xlabel("step"); axes[1].set_ylabel("learning rate")\n'
            'axes[2].plot(t["step"], t["grad_norm"]); axes[2].set_xlabel("step"); axes[2].set_ylabel("gradient norm (before clipping)")\n'
            'plt.tight_layout()'),
    ])

NOTEBOOKS = {"ablation.ipynb": ablation_notebook, "training_curves.ipynb": curves_notebook}

def main():
    execute = "--execute" in sys.argv
    for name, make in NOTEBOOKS.items():
        nb = make()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        if execute:
            from nbclient import NotebookClient
            NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
        out = HERE / name
        tmp = out.with_suffix(".ipynb.tmp")
        nbformat.write(nb, str(tmp))
        tmp.replace(out)
        print("wrote", out, "(executed)" if execute else "")

if __name__ == "__main__":
    main()
