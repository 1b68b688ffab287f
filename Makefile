# modelops: the front door. `make demo` and `make test` work on a fresh machine; each
# installs what it needs (the Python environment, the test bed's Go-built binaries) and
# caches it under $(MODELOPS_CACHE).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export MODELOPS_CACHE ?= $(HOME)/.cache/modelops
PYTHON ?= python3

# Resolved on demand: each script prints its (cached) output path.
venv_python = $$(scripts/ensure-venv.sh)/bin/python
binaries = $$(e2e/testbed/build.sh)

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: venv
venv: ## Build (once) the Python environment and print its path
	@scripts/ensure-venv.sh

.PHONY: binaries
binaries: ## Build (once) etcd, Kubernetes, kubectl, helm and MinIO from pinned Go modules
	@e2e/testbed/build.sh

.PHONY: images
images: ## Build (once) the operator and compressor images with buildah; prints each image's directory
	@images/build.sh operator compressor

TESTBED ?= local

.PHONY: cluster-up
cluster-up: ## Bring up the local test bed (or reuse a running one); prints the kubeconfig path. TESTBED=kind: a kind cluster with MinIO
ifeq ($(TESTBED),kind)
	@e2e/testbed/kind/up.sh
else
	@python=$(venv_python); bin=$(binaries); \
	  $(PYTHON) -m e2e.testbed.cluster up --binaries "$$bin" --python "$$python"
endif

.PHONY: cluster-down
cluster-down: ## Stop every process of the local test bed and remove its network
	@$(PYTHON) -m e2e.testbed.cluster down

.PHONY: crds
crds: ## Generate crds/*.yaml from the typed API, their copies (chart, config/crd) and docs/api-reference.md
	@PYTHONPATH=operator $(venv_python) -m modelops.api.crdgen crds/
	@rm -f charts/modelops/crds/*.yaml && cp crds/*.yaml charts/modelops/crds/
	@cp crds/*.yaml config/crd/
	@PYTHONPATH=operator $(venv_python) -m modelops.api.docgen crds/ docs/api-reference.md

.PHONY: api-reference
api-reference: ## Generate docs/api-reference.md from crds/ (every field, type, default, validation)
	@PYTHONPATH=operator $(venv_python) -m modelops.api.docgen crds/ docs/api-reference.md

.PHONY: manifests
manifests: ## Generate the kustomize manifests under config/ (crd, default, namespaced) from the chart
	@bin=$(binaries); $(venv_python) scripts/render-manifests.py --helm "$$bin/helm"

.PHONY: chart-docs
chart-docs: ## Generate the values table of charts/modelops/README.md from the comments in values.yaml
	@$(venv_python) scripts/chart-values-table.py

.PHONY: test
test: ## Run the test suite (unit, integration, e2e) on the local test bed; faults and the slow canary tests run on demand
	@scripts/run-tests.sh -m "not faults and not canary_exact and not prometheus and not netpol and not argocd"

.PHONY: test-faults
test-faults: ## Run the fault suite: kill -9s, control-plane outages, HA handover (about 7 minutes)
	@scripts/run-tests.sh -m faults

.PHONY: test-mutations
test-mutations: ## Prove the fault suite: each patch in tests/mutations/ breaks one property, and its fault test must fail
	@scripts/mutation-proofs.sh

.PHONY: test-canary-exact
test-canary-exact: ## Run the acceptance's good canary exactly: 10 % then 50 % on 9 stable pods, >= 10,000 requests (about 3 minutes)
	@scripts/run-tests.sh -m canary_exact

.PHONY: test-prometheus
test-prometheus: ## Run every test through a real Prometheus: the canary analysis, the autoscaler, the dashboard's queries (about 2.5 minutes; Prometheus's first build 5 to 17)
	@scripts/run-tests.sh -m prometheus

.PHONY: test-canary-prometheus
test-canary-prometheus: ## Run only the canary analysis and the autoscaler through a real Prometheus (about 1.5 minutes)
	@scripts/run-tests.sh -m prometheus tests/integration/test_canary_prometheus.py

.PHONY: test-netpol
test-netpol: ## Run the chart's NetworkPolicies under a real policy engine, kube-router (built on first use)
	@scripts/run-tests.sh -m netpol

.PHONY: test-argocd
test-argocd: ## Run the chart's Argo CD health checks in Argo CD's own Lua VM (seconds; its first build several minutes)
	@scripts/run-tests.sh -m argocd

.PHONY: test-unit
test-unit: ## Run only the unit tests (no cluster)
	@scripts/run-tests.sh -m unit

.PHONY: demo
demo: ## Run the whole lifecycle on the local test bed
	@python=$(venv_python); bin=$(binaries); \
	  MODELOPS_BINARIES="$$bin" PYTHONPATH=operator:. "$$python" -m e2e.demo

.PHONY: bench-plots
bench-plots: ## Render the plots of docs/benchmarks.md from bench/results/*.json (PNGs under docs/images/benchmarks/)
	@PYTHONPATH=operator:. $(venv_python) bench/plots.py

.PHONY: bench
bench: ## Run the benchmarks; JSON under bench/results/, summary in docs/benchmarks.md
	@python=$(venv_python); \
	  PYTHONPATH=operator:. "$$python" bench/compress_bench.py; \
	  PYTHONPATH=operator:. "$$python" bench/transformer_bench.py; \
	  PYTHONPATH=operator:. "$$python" bench/int4_bench.py; \
	  PYTHONPATH=operator:. "$$python" bench/triton_bench.py

.PHONY: bench-large
bench-large: ## A 4.2 GiB external-data transformer through the operator: compress, gate, serve cold and from the node cache; bench/results/large.json
	@scripts/run-tests.sh -s -p no:cacheprovider bench/large_bench.py

.PHONY: bench-scale
bench-scale: ## Reconcile 1,000 ModelVersions and 1,000 ModelDeployments on the test bed with kwok nodes; bench/results/scale.json
	@python=$(venv_python); bin=$(binaries); \
	  MODELOPS_BINARIES="$$bin" PYTHONPATH=operator:. "$$python" bench/scale_bench.py

.PHONY: demo-output
demo-output: ## Run `make demo` and write its output to docs/demo-output.txt and README.md
	@$(venv_python) scripts/demo-output.py

.PHONY: samples
samples: ## Fill config/samples/ in for the local test bed (endpoint, credentials, bucket, sha256s, backend) into build/samples/
	@python=$(venv_python); bin=$(binaries); \
	  MODELOPS_BINARIES="$$bin" PYTHONPATH=operator:. "$$python" scripts/samples.py
