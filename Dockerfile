# polypstream on an NVIDIA GPU. onnxruntime-gpu 1.31 on PyPI is built for CUDA 13 and
# cuDNN 9, so the base is CUDA 13 with cuDNN; without a GPU the same image runs on CPU.
#   docker build -t polypstream .
#   docker run --gpus all -p 50051:50051 -p 8000:8000 polypstream
# Ports: 50051 gRPC (polypstream.v1.Segmenter, grpc.health.v1, reflection), 8000 /metrics.
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
# The shipped models install inside the package (polypstream/models/), as with `pip install polypstream`.
COPY models/*.onnx models/SHA256SUMS models/README.md models/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[gpu]" \
    && cd / && rm -rf /src
WORKDIR /

RUN useradd --create-home --uid 10001 polypstream
USER polypstream

# compute: CUDA; utility: NVML (libnvidia-ml.so.1), which the GPU's metrics read. The CUDA base
# image sets both already; said here so that a change of base keeps them.
ENV PATH=/opt/venv/bin:$PATH \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    POLYPSTREAM_ADDRESS=0.0.0.0:50051 \
    POLYPSTREAM_METRICS_ADDRESS=0.0.0.0:8000 \
    POLYPSTREAM_HEALTH_ADDRESS=127.0.0.1:50052
EXPOSE 50051 8000
# The live view is off by default; turn it on with -e POLYPSTREAM_UI=0.0.0.0:8080 -p 8080:8080
# (with TLS and a token, as for the gRPC port: frames are patient data).

# The health-only port (plaintext, inside the container) answers whether or not TLS and a
# token are turned on for the main port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s \
    CMD ["polypstream", "health", "--server", "127.0.0.1:50052"]
ENTRYPOINT ["polypstream"]
CMD ["serve"]
