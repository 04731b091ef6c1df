"""What the suites train and score: ``models`` (MLP, CNNs, the causal transformer), ``small_cnn`` (for 28x28 / 14x14
digits) and ``task`` (a task's data and model, the SGD loop with hooks at the scored steps)."""
