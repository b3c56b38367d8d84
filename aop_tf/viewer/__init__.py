"""The viewer: see, check, correct and save landmarks in the browser, served on this machine.

  python -m aop_tf.viewer [--model=psfhs] [--inputs=scans/] [--labels=corrections.csv] [--open]

`server` is the local web server (Starlette on uvicorn; 127.0.0.1 and a per-start token), over a
`workspace.Workspace` (the model, the inputs opened, their predictions), whose corrections go to an
IUGC label CSV (`labels.LabelStore`). The page is `static/` (plain ES modules and a canvas); its
one AoP formula is `static/aop.js`.
"""
