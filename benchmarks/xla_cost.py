"""XLA's cost analysis of a compiled program and what each of its HLO instructions computes; shared by
the benchmark command and the profiler (no torch)."""

from __future__ import annotations

import re


def flops_of(compiled) -> float | None:
  """XLA's FLOP count of a compiled program (None when the backend gives none)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = (cost or {}).get("flops")
  return float(flops) if flops else None


# --- what each instruction of an optimised HLO module computes ------------------------------------------
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.*?)\s(?P<opcode>[a-z][\w\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# Opcodes that move or view data without arithmetic.
DATA_MOVEMENT = frozenset({
    "bitcast", "broadcast", "concatenate", "constant", "copy", "dynamic-slice", "dynamic-update-slice",
    "get-tuple-element", "iota", "pad", "parameter", "reshape", "reverse", "slice", "transpose", "tuple"})
KINDS = ("convolution", "dot", "reduction", "data movement", "elementwise", "other")


def op_kinds(hlo_text: str) -> dict[str, dict[str, str]]:
  """What each instruction of an optimised HLO module does, by name (the names XLA:CPU's thunks and the
  profiler's events carry).

  Args:
    hlo_text: the module as `compiled.as_text()` prints it.

  Returns:
    {name: {"kind", "shape", "op_name"}}: kind is "convolution" or "dot" when the instruction (or the
    computation a fusion calls) contains one, else "reduction", "data movement" (only the opcodes in
    DATA_MOVEMENT) or "elementwise"; "other" for calls, loops and collectives. shape is the output
    shape; op_name the JAX operation it came from (metadata; "" when XLA kept none).
  """
  computations: dict[str, list[str]] = {}
  current = None
  for line in hlo_text.splitlines():
    match = _COMPUTATION.match(line)
    if match and "=" not in line.split("{", 1)[0]:
      current = computations.setdefault(match.group("name"), [])
    elif current is not None and line.strip() not in ("", "}"):
      current.append(line)

  def opcodes(lines: list[str]) -> set[str]:
    return {m.group("opcode") for m in map(_INSTRUCTION.match, lines) if m}

  kinds = {}
  for lines in computations.values():
    for line in lines:
      match = _INSTRUCTION.match(line)
      if not match:
        continue
      called = _CALLS.search(line)
      body = computations.get(called.group(1), []) if called else []
      ops = {match.group("opcode")} | opcodes(body)
      op_name = _OP_NAME.search(line) or next(filter(None, map(_OP_NAME.search, reversed(body))), None)
      if "convolution" in ops:
        kind = "convolution"
      elif "dot" in ops:
        kind = "dot"
      elif ops & {"reduce", "reduce-window"}:
        kind = "reduction"
      elif ops <= DATA_MOVEMENT | {"fusion"}:
        kind = "data movement"
      elif ops & {"call", "while", "conditional", "custom-call", "all-reduce", "all-gather"}:
        kind = "other"
      else:
        kind = "elementwise"
      kinds[match.group("name")] = {"kind": kind, "shape": match.group("shape"),
                                    "op_name": op_name.group(1) if op_name else ""}
  return kinds
