"""The table of hostile expressions, shared by the sandbox tests and the rule-node tests."""

from __future__ import annotations

# The message the hostile expressions are evaluated against.
HOSTILE_MSG = {"faces": [{"name": "owner", "score": 0.93, "box": [1, 2, 3, 4]}],
               "label": "Front Door", "count": "%0300000000d"}

# (expression, "load" if refused when the rules are loaded, else "run" for bounded at run time)
HOSTILE = [
    ('__import__("os").system("id")', "load"),  # import through a dunder builtin
    ("import os", "load"),  # a statement, not an expression
    ("().__class__.__bases__[0].__subclasses__()", "load"),  # the classic dunder walk
    ("msg.__class__.__init__.__globals__", "load"),
    ("msg.faces.__len__()", "load"),
    ("getattr(msg, '__class__')", "load"),  # getattr is not a function here
    ("open('/etc/passwd').read()", "load"),
    ("eval('1 + 1')", "load"),
    ("exec('x = 1')", "load"),
    ("compile('1', 'f', 'eval')", "load"),
    ("(lambda: 1)()", "load"),
    ("(x := 5)", "load"),  # assignment expression
    ("'{0.__class__}'.format(msg)", "load"),  # str.format reaches attributes
    ("f'{msg:>999999999}'", "load"),  # format-spec width allocates
    ("[*range(10)]", "load"),  # star-unpacking is not in the allowed node set
    ("[" * 100 + "]" * 100, "load"),  # nesting beyond the depth limit
    ("(" * 300 + "1" + ")" * 300, "load"),  # beyond the parser's own nesting limit
    ("-" * 100 + "1", "load"),  # deep unary nesting
    ("1 + " * 600 + "1", "load"),  # too long / too many nodes
    ("not_a_variable + 1", "load"),  # unknown name
    ("9 ** 9 ** 9", "run"),  # huge power
    ("2 ** 100000", "run"),
    ("1 << 10 ** 8", "run"),  # huge shift
    ("'a' * 10 ** 9", "run"),  # giant string
    ("'ab' * 40000 + 'cd' * 40000", "run"),  # concatenation over the cap
    ("[0] * 10 ** 8", "run"),  # giant list
    ("[x for x in range(10 ** 9)]", "run"),  # long comprehension over a huge range
    ("[[y for y in range(5000)] for x in range(5000)]", "run"),  # nested comprehensions
    ("sum(range(10 ** 12))", "run"),  # a C-level loop the deadline could not interrupt
    ("max(list(range(10 ** 7)))", "run"),
    ("str(10 ** 3000)", "run"),  # int bits cap (would also be a 3000-digit string)
    ("round(5, -10 ** 6)", "run"),
    ("msg.label.center(10 ** 9)", "load"),  # a method that allocates: not callable
    ("msg.faces.append(1)", "load"),  # mutation of message data
    ("state.update(armed=True)", "load"),  # mutation of rule state
    ("(10 ** 600) * (10 ** 600) * (10 ** 600) * (10 ** 600) * (10 ** 600)", "run"),
    ("sum(sum(range(9000)) for i in range(9000))", "run"),  # slow in total: deadline
    ("str([[0] * 99999] * 1000)", "run"),  # 1,000 references to one big list: 10^8 to print
    ("[msg.faces for i in range(10000)]", "run"),  # references to message data, multiplied
    ("sum([[0] * 50000, [0] * 50000], [])", "run"),  # list concatenation inside sum()
    # `%` on a string is printf formatting: a width or precision allocates or runs in C
    ("msg.count % 2 == 0", "run"),  # msg.count is "%0300000000d": 300 MB (see HOSTILE_MSG)
    ("'%.200000000f' % 1.0", "run"),  # seconds of float formatting
    # bounds bypasses found by attack testing (issue 13): each ran unchecked before
    ("f\"{'a' * 60000}{'a' * 60000}\"", "run"),  # f-string parts under the cap, the whole over
    ("len(f\"{'f' * 99999}{'f' * 99999}{'f' * 99999}\")", "run"),
    ("int('f' * 90000, 16)", "run"),  # 360k bits through int(), past the 4096-bit cap
    ("int('v' * 20000, 32)", "run"),
    ("int('1' * 5000, 2) > 0", "run"),  # a short text, still a 5000-bit result
    # an 800k-bit by 200k-bit division: one C call the deadline cannot interrupt
    ("int(f\"{'f' * 99999}{'f' * 99999}\", 16) // int('f' * 50000, 16)", "run"),
    ("('a' * 99999).strip('b' * 99998 + 'a')", "run"),  # strip: length x chars comparisons
    ("(msg.label * 9000).lstrip('Front D' * 1000 + 'o')", "run"),
]
