"""Pure logic of the operator: decisions and rendering, no I/O."""
