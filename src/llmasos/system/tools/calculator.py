"""A calculator tool that evaluates arithmetic without eval/exec.

The expression is parsed with `ast` and walked against an allow-list, so nothing but numbers, arithmetic
and a fixed set of math functions can run. Every step is bounded (length, nesting, result size) because
the expressions come from a model or an untrusted app: `9**9**9` must be refused, not computed.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from llmasos.system.errors import InvalidRequest

MAX_LENGTH = 500
MAX_DEPTH = 100
# Below Python's default 4300-digit limit on int -> str, so every result the calculator returns can also be
# printed; the pow guard below refuses anything estimated past it before computing.
MAX_DIGITS = 4000
_MAX_BITS = math.ceil(MAX_DIGITS * math.log2(10))
# round(x, -10**9) on an int builds 10**(10**9); real uses never need more than this.
_MAX_ROUND_DIGITS = 100

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}

_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int):
        raise InvalidRequest("round() takes an integer number of digits")
    if abs(ndigits) > _MAX_ROUND_DIGITS:
        raise InvalidRequest(f"round() digits must be within ±{_MAX_ROUND_DIGITS}")
    return round(x, ndigits)


def _min(*args: Number) -> Number:
    return min(args)


def _max(*args: Number) -> Number:
    return max(args)


# name -> (function, min args, max args)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 2),
    "log10": (math.log10, 1, 1),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1),
    "acos": (math.acos, 1, 1),
    "atan": (math.atan, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (_min, 1, 50),
    "max": (_max, 1, 50),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}


def _checked(value: object) -> Number:
    """Refuse results that are not finite real numbers or too large to keep computing with."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest("result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest("result is out of range")
    if isinstance(value, int) and value.bit_length() > _MAX_BITS:
        raise InvalidRequest(f"result is too large (more than {MAX_DIGITS} digits)")
    return value


def _power(base: Number, exponent: Number) -> Number:
    # int ** int is the only exact (and so unbounded-cost) case; estimate its size before computing it.
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        digits = exponent * math.log10(abs(base))
        if digits > MAX_DIGITS:
            raise InvalidRequest(f"result is too large (about {digits:.3g} digits, limit {MAX_DIGITS})")
    return base**exponent


def _describe(node: ast.AST) -> str:
    try:
        text = ast.unparse(node)
    except Exception:  # unparse is only for the message; never let it mask the refusal
        text = type(node).__name__
    return text if len(text) <= 60 else text[:57] + "..."


class _Evaluator:
    def eval(self, node: ast.AST, depth: int = 0) -> Number:
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"expression is nested too deeply (limit {MAX_DEPTH})")
        try:
            return _checked(self._eval(node, depth + 1))
        except ZeroDivisionError:
            raise InvalidRequest("division by zero") from None
        except OverflowError:
            raise InvalidRequest("result is out of range") from None

    def _eval(self, node: ast.AST, depth: int) -> Number:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise InvalidRequest(f"unsupported expression: {_describe(node)} (only real numbers)")
            return node.value
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            raise InvalidRequest(f"unsupported expression: unknown name {node.id!r}")
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self.eval(node.operand, depth))
        if isinstance(node, ast.BinOp):
            return self._binary(node, depth)
        if isinstance(node, ast.Call):
            return self._call(node, depth)
        raise InvalidRequest(f"unsupported expression: {_describe(node)}")

    def _binary(self, node: ast.BinOp, depth: int) -> Number:
        if isinstance(node.op, ast.BitXor):
            raise InvalidRequest(
                "unsupported expression: '^' is not a power operator here; use ** (e.g. 2**10)"
            )
        if not isinstance(node.op, ast.Pow) and type(node.op) not in _BINARY:
            raise InvalidRequest(f"unsupported expression: operator in {_describe(node)}")
        left = self.eval(node.left, depth)
        right = self.eval(node.right, depth)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        return _BINARY[type(node.op)](left, right)

    def _call(self, node: ast.Call, depth: int) -> Number:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name is None or name not in _FUNCTIONS:
            what = repr(name) if name else _describe(node.func)
            raise InvalidRequest(f"unsupported expression: function {what} is not available")
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise InvalidRequest(f"unsupported expression: {name}() takes plain positional arguments")
        fn, least, most = _FUNCTIONS[name]
        if not least <= len(node.args) <= most:
            expected = str(least) if least == most else f"{least} to {most}"
            raise InvalidRequest(f"{name}() takes {expected} arguments, got {len(node.args)}")
        args = [self.eval(arg, depth) for arg in node.args]
        try:
            return fn(*args)
        except InvalidRequest:
            raise
        except ValueError:
            raise InvalidRequest(f"math domain error in {_describe(node)}") from None


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression such as `2 + 3 * sqrt(16)`; any refusal is `InvalidRequest`."""
    if not isinstance(expression, str):
        raise InvalidRequest("expression must be a string")
    if len(expression) > MAX_LENGTH:
        raise InvalidRequest(f"expression is too long ({len(expression)} characters, limit {MAX_LENGTH})")
    source = expression.strip()
    if not source:
        raise InvalidRequest("expression is empty")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise InvalidRequest(f"invalid expression: {exc.msg}") from None
    except ValueError:  # e.g. a NUL byte in the source
        raise InvalidRequest("invalid expression") from None
    except (RecursionError, MemoryError):
        raise InvalidRequest("expression is nested too deeply") from None
    return _Evaluator().eval(tree.body)
