"""Models: the catalog of named models, fetching their files, and reading and writing checkpoints.

Owns everything between a model name or file and a built network: `registry` (what each named
model is, where its files live), `download` (fetching them into the cache), `resolve` (name, path
or folder to a model) and `checkpoint` (every file format). The networks themselves are
`stemsplit.nn`; running them is `stemsplit.engine`.

This package module imports nothing: `stemsplit --help` imports its torch-free parts alone.
"""
