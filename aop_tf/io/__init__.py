"""Reading user files: images (`images`), `"(x, y)"` points (`points`), IUGC label CSVs
(`labels`) and what they yield (`records`).

The lowest layer of aop_tf besides `geometry`: both `data_prep` and the entry points of `aop_tf`
(evaluate, predict) read files through it, so a file is refused, or decoded, the same way
everywhere.
"""
