"""`edm test`: test files beside a topology (``spec``), run by an in-process driver on the
compiled operators and real stores of `edm run` (``driver``), case by case (``cases``), each
on a ``harness.Harness`` (also the entry point of tests written in Python).

It may import the runtime, state, operators and the language; nothing below the CLI imports it.
"""
