"""What the suites train and score: ``models`` (MLP, CNNs, the causal transformer) and ``task`` (a task's data and
model, the SGD loop with hooks at the scored steps)."""
