"""Chapter 15's notes and headline, from its results JSON alone."""
from shared.report import markdown_table

NOT_RUN = "not run"


def stack_order(r: dict) -> list[str]:
    """Every stack this run tried, PyTorch first, in the order of the config."""
    return ["pytorch"] + [s for s in r["config"]["stacks"] if s != "pytorch"]


def rows_by_stack(r: dict) -> dict:
    return {row["stack"]: row for row in r["stacks"]}


def point(row: dict, sweep: str, size: int) -> dict:
    """One measured point of a sweep ({} if that point was skipped or not measured)."""
    key = "batch" if sweep == "batch_sweep" else "context"
    return next((m for m in row[sweep] if m[key] == size and "tokens_per_s" in m), {})


def vllm_over_hf(r: dict, batch: int) -> float | None:
    """The common claim "vLLM is 5-10x faster than HF generate", measured: tokens/s ratio at one batch size."""
    by = rows_by_stack(r)
    if "vllm" not in by or "hf" not in by:
        return None
    v, h = point(by["vllm"], "batch_sweep", batch), point(by["hf"], "batch_sweep", batch)
    return v["tokens_per_s"] / h["tokens_per_s"] if v and h else None


def headline(r: dict) -> dict:
    by = rows_by_stack(r)
    top = max(r["config"]["batch_sizes"])
    b1 = {s: point(row, "batch_sweep", 1).get("tokens_per_s") for s, row in by.items()}
    return {"model": r["model"]["name"], "params": r["model"]["params"], "device": r["meta"]["device"],
            "stacks_run": list(by), "stacks_not_run": [s["stack"] for s in r["skipped"]],
            **{f"{s}_max_abs_logit_diff": row["parity"]["max_abs_logit_diff"] for s, row in by.items()
               if s != "pytorch"},
            **{f"{s}_tokens_per_s_b1": v for s, v in b1.items()},
            f"pytorch_tokens_per_s_b{top}": point(by["pytorch"], "batch_sweep", top).get("tokens_per_s"),
            f"vllm_over_hf_b{top}": vllm_over_hf(r, top),
            "gpt2_max_abs_logit_diff": r["gpt2"]["max_abs_logit_diff"]}


def _ran_where(r: dict) -> str:
    meta, by = r["meta"], rows_by_stack(r)
    why = {s["stack"]: f"{s['why']} (enable: `{s['enable'].split('  ')[0].strip()}`)" for s in r["skipped"]}
    rows = []
    for s in stack_order(r):
        ran = s in by
        rows.append({"stack": s, "ran in this run": "yes" if ran else "no",
                     "where / why not": f"{meta['machine']}, device {meta['device']}" if ran else why.get(s, "")})
        if s == "deepspeed" and ran:
            inj = by[s].get("kernel_injection", "")
            rows.append({"stack": "deepspeed kernel injection", "ran in this run": "yes" if inj == "ok" else "no",
                         "where / why not": "" if inj == "ok" else inj})
    return markdown_table(rows)


def _summary(r: dict) -> str:
    ctx = r["base_context"]
    rows = []
    for row in r["stacks"]:
        m = point(row, "context_sweep", ctx)
        rows.append({"stack": row["stack"], "import s": row["import_s"], "import MB": row["import_rss_mb"],
                     "load s": row["load_s"], f"peak MB ({row['mem_kind']}, load + 1st gen)": row["peak_mem_mb"],
                     "max abs Δlogit": row["parity"]["max_abs_logit_diff"],
                     f"TTFT ms (B=1, ctx {ctx})": m.get("ttft_ms"), "per-token ms": m.get("per_token_ms"),
                     "tokens/s (B=1)": m.get("tokens_per_s")})
    return markdown_table(rows, ".3g")


def _throughput(r: dict) -> str:
    """Tokens/s per batch size, one column per stack tried (vLLM's column says why it is empty),
    and the vLLM / HF generate ratio the common claim is about."""
    by, order = rows_by_stack(r), stack_order(r)
    rows = []
    for b in r["config"]["batch_sizes"]:
        row = {"batch": b}
        for s in order:
            m = point(by[s], "batch_sweep", b) if s in by else {}
            row[s] = m.get("tokens_per_s", NOT_RUN if s not in by else "n/a (batch 1 only)")
        ratio = vllm_over_hf(r, b)
        row["vLLM ÷ HF generate"] = NOT_RUN if ratio is None else ratio
        rows.append(row)
    return markdown_table(rows, ".4g")


def _by_context(r: dict) -> str:
    rows = []
    for row in r["stacks"]:
        entry = {"stack": row["stack"]}
        for c in r["config"]["contexts"]:
            m = point(row, "context_sweep", c)
            entry[f"ctx {c}: TTFT / per-token ms"] = f"{m['ttft_ms']:.3g} / {m['per_token_ms']:.3g}" if m else "n/a"
        rows.append(entry)
    return markdown_table(rows)


def same_tokens(row: dict) -> list[float]:
    """Per measured sweep point of one stack: the share of its greedy tokens equal to PyTorch's."""
    return [m["same_tokens_as_pytorch"] for k in ("batch_sweep", "context_sweep") for m in row[k]
            if "same_tokens_as_pytorch" in m]


def _same_tokens(r: dict) -> str:
    rows = []
    for row in r["stacks"]:
        shares = same_tokens(row)
        if row["stack"] != "pytorch" and shares:
            rows.append({"stack": row["stack"], "sweep points": len(shares),
                         "share of tokens equal to PyTorch's (worst point)": min(shares)})
    return markdown_table(rows)


def notes(r: dict) -> str:
    c, m, g = r["config"], r["model"], r["gpt2"]
    return "\n\n".join([
        f"Model: zoo `{m['name']}` ({m['params']:,} parameters, {m['n_layer']} layers, d_model {m['d_model']}, "
        f"vocabulary {m['vocab_size']}), float32, greedy; {c['new_tokens']} new tokens per measurement, median of "
        f"{c['repeats']} after one warm-up.",
        "**What ran where in this run**\n\n" + _ran_where(r),
        "**Stacks** (batch 1 at the middle prompt length)\n\n" + _summary(r),
        f"**Tokens/s by batch size** (prompt {r['base_context']} tokens)\n\n" + _throughput(r),
        "**Time to first token and per-token latency by prompt length** (batch 1)\n\n" + _by_context(r),
        "**Greedy tokens against PyTorch's**\n\n" + _same_tokens(r),
        "**GPT-2 folder in the workbook model**\n\n" + markdown_table(
            [{k: g[k] for k in ("source", "params", "max_abs_logit_diff", "greedy_tokens_equal")}], ".3g"),
    ])
