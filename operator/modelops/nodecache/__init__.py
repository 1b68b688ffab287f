"""The node-local, content-addressed model cache: a store of verified files by sha256 on a
node's disk (store.py, with its layout and decisions in layout.py), and the agent that fills
it from S3 through modelops.transfer and evicts the least recently used entries above a budget
(agent.py, run as `python -m modelops.nodecache`). docs/large-models.md, "Node-local cache",
describes the layout, the guarantees and the limits."""
