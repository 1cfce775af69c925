"""Input pipeline: TFDS datasets, preprocessing ops, the offline digits dataset."""
from isojax.data.input_pipeline import (DatasetInfo, describe, eval_batches, eval_steps,
                                        get_builder, num_examples, train_batches)

__all__ = ['DatasetInfo', 'describe', 'eval_batches', 'eval_steps', 'get_builder', 'num_examples', 'train_batches']
