"""Training data: photo sets and their masks, image reading, mask clean-up, masks drawn from word attention."""
