"""The project's limits and size defaults, in one place and importable without torch (the command
line reads them to build its ``--help``). Other modules import these names; none defines its own."""
from __future__ import annotations

# Largest image (width * height) decoded anywhere: training, encoding, search, serving and
# thumbnails alike, so an image that was encoded can always be shown. PIL's own bomb limit.
MAX_PIXELS: int = 89_478_485

# the most --max-pixels may raise that limit to: a 65536 x 65536 image (12 GiB as 8-bit RGB)
MAX_PIXELS_CAP: int = 1 << 32

# Longest edge an image is resized to before the centre crop (img_size / crop_pct, from a config
# or an export's metadata): a square image resized to 8192 px takes 200 MB as 8-bit RGB.
MAX_RESIZE: int = 8192

# Most bytes read from one image file on disk. The bound is for files that never end (a link to
# /dev/zero, a file still growing), not for real photos: an uncompressed 8-bit RGBA image at the
# pixel limit (a TIFF, a BMP) still fits, with room for its metadata.
MAX_FILE_BYTES: int = 4 * MAX_PIXELS + 2**20

# images per shard of an encoded collection (the unit of resume)
SHARD_SIZE: int = 4096
# an ivf index whose rows were more than this share added after its cells were trained is reported
# as due for `hybridhash index --kind ivf` again (hybridhash.index_ids.ivf_drift)
IVF_RETRAIN_SHARE: float = 0.2

# the HTTP service
MAX_UPLOAD_BYTES: int = 20 * 2**20  # largest accepted upload
# the most --max-upload-mb may raise it to: an image under MAX_PIXELS is at most 716 MB even stored
# uncompressed (16-bit RGBA TIFF, 8 bytes a pixel)
UPLOAD_BYTES_CAP: int = 1024 * 2**20
MAX_K: int = 100  # most results one search of the service may ask for (the default of --max-k)
# the largest k any search accepts (the index, search --k, --max-k, the Python API): the (n, k)
# result is allocated up front, at 12 bytes a slot
K_CAP: int = 1_000_000
MAX_BATCH: int = 16  # most concurrent queries encoded in one forward
MAX_DECODES: int = 2  # images decoded at once (a 49 MP PNG costs ~190 MB while it decodes)
MAX_REQUESTS: int = 32  # requests answered at once; more get 503 with Retry-After
BODY_TIMEOUT: float = 30.0  # seconds an upload may stall between two chunks before a 408
KEEP_ALIVE_TIMEOUT: int = 5  # seconds an idle keep-alive connection stays open
FOLLOW_INTERVAL: float = 1.0  # seconds between the service's checks for a new generation (one stat)
# the most the service's options may raise those to
MAX_BATCH_CAP: int = 4096
MAX_DECODES_CAP: int = 256
MAX_REQUESTS_CAP: int = 65536
MAX_TIMEOUT: int = 3600  # seconds, for --body-timeout and --keep-alive-timeout

# the oldest ONNX opset the export writes (and its default), and the most --opset may ask for (the
# torch installed says which of those it writes)
ONNX_OPSET: int = 17
ONNX_OPSET_CAP: int = 99

# model configs (a config.json may come from anywhere; these bound what it can make us allocate)
IMAGENET_MEAN: tuple = (0.485, 0.456, 0.406)  # the default normalisation of every architecture
IMAGENET_STD: tuple = (0.229, 0.224, 0.225)
# largest image edge a config may ask for: a 4096 px HybridHash base model already holds half a GB of
# position embeddings, and a config.json saying more is a mistake or an attempt to exhaust memory
MAX_IMG_SIZE: int = 4096
MAX_EMBED_DIM: int = 8192  # HybridHash's widest level
MAX_DEPTH: int = 128  # HybridHash's blocks per level
MAX_MLP_RATIO: float = 16.0  # HybridHash's MLP width over its embedding width
MAX_CNN_WIDTH: int = 4096  # channels of a small-CNN stage

# training and evaluation options
MAX_INT_OPTION: int = 2**32 - 1  # seeds, epochs, sizes, intervals, methods' integer hyper-parameters:
# NumPy's legacy seeding stops here, and no count of images or steps comes near it
MAX_THREADS: int = 1024  # torch threads per process
MAX_WORKERS: int = 256  # data-loading processes
# rows of HybridHash's memory bank per training image: rows beyond the training set are never written
# and only weigh the dissimilar pairs; the original's 10000 rows for CIFAR-10's 4500-5000 training
# images are about 2.2 per image
BANK_ROWS_PER_IMAGE: int = 4

# Most features the shallow baselines that need a covariance (pcah, itq, sh) accept: the float64
# d x d matrix, its eigenvectors and the solver's workspace take about 3 * 8 * d^2 bytes (6 GiB here)
MAX_COVARIANCE_FEATURES: int = 16384
# Training-set features (float32, n x d) a training-free baseline's fit keeps in memory between its
# passes; above this the feature network runs again for each pass (itq and sh take two)
FEATURE_CACHE_BYTES: int = 2 << 30
