"""The test bed node agent: runs pods bound to its Node as local processes."""
