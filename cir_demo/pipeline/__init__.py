"""Model meets data: batch encoding of images and captions, and building gallery indexes."""
