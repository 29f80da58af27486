"""What chapter 15's README says about its measured results, checked against them (shared/claims.py)."""
from report import point, rows_by_stack, same_tokens
from shared.claims import Claim


def _ratio(row: dict, sweep: str, field: str, top, bottom) -> float:
    return point(row, sweep, top)[field] / point(row, sweep, bottom)[field]


def _ctx(r: dict, row: dict, field: str) -> float:
    """`field` at the longest prompt / at the shortest, batch 1."""
    c = r["config"]["contexts"]
    return _ratio(row, "context_sweep", field, max(c), min(c))


def _batching_gain(r: dict) -> float:
    """PyTorch tokens/s at the largest batch / at batch 1."""
    b = r["config"]["batch_sizes"]
    return _ratio(rows_by_stack(r)["pytorch"], "batch_sweep", "tokens_per_s", max(b), min(b))


def _weights_mb(r: dict) -> float:
    return r["model"]["params"] * 4 / 2**20   # float32


CLAIMS = [
    Claim("HF and DeepSpeed run the identical float32 maths and land at or within rounding of zero",
          lambda r: max(rows_by_stack(r)[s]["parity"]["max_abs_logit_diff"] for s in ("hf", "deepspeed")),
          below=1e-4, what="largest max |Δlogit| to PyTorch of HF and DeepSpeed"),
    Claim("every stack that ran made the same greedy tokens as PyTorch at every sweep point",
          lambda r: min(min(same_tokens(row)) for row in r["stacks"] if row["stack"] != "pytorch"),
          above=0.999, what="worst share of tokens equal to PyTorch's, over stacks and sweep points"),
    Claim("total tokens/s climbs steeply with the batch", _batching_gain, above=4,
          what="PyTorch tokens/s at the largest batch / at batch 1"),
    Claim("Time to first token grows with the prompt",
          lambda r: min(_ctx(r, row, "ttft_ms") for row in r["stacks"]), above=1.2,
          what="smallest TTFT ratio, longest / shortest prompt, over the stacks that ran"),
    Claim("the per-token decode latency of the PyTorch loop barely moves",
          lambda r: _ctx(r, rows_by_stack(r)["pytorch"], "per_token_ms"), above=0.67, below=1.5,
          what="PyTorch per-token latency, longest / shortest prompt"),
    Claim("importing transformers adds more resident memory than the model's weights by more than an order of "
          "magnitude", lambda r: rows_by_stack(r)["hf"]["import_rss_mb"] / _weights_mb(r), above=10,
          what="RSS that importing transformers adds / float32 weight bytes"),
    Claim("DeepSpeed's kernel injection failed on this CPU",
          lambda r: float(r["meta"]["device"] == "cpu" and rows_by_stack(r)["deepspeed"]["kernel_injection"] != "ok"),
          above=0.5, what="1 if the run was on CPU and kernel injection did not succeed"),
    Claim("vLLM has not run for the committed numbers",
          lambda r: float("vllm" not in rows_by_stack(r)), above=0.5,
          what="1 if no vLLM row is in the results (a GPU run must update the README)"),
]
