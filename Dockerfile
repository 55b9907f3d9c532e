# The Visus image the KubeRay manifests in k8s/ run (head, workers, the tiny-checkpoint init container).
# Ray's own image plus the project: one image for CPU and GPU pods, since the PyPI torch wheels carry
# their CUDA runtime and the GPU node brings the driver.
#
#   docker build -t visus:0.1.0 .          # the tag k8s/ expects: the version in pyproject.toml
#   docker tag visus:0.1.0 REGISTRY/visus:0.1.0 && docker push REGISTRY/visus:0.1.0
#   (cd k8s/overlays/gpu && kustomize edit set image visus=REGISTRY/visus:0.1.0)   # or your own overlay
#
# RAY_VERSION must stay the ray[serve] pin of pyproject.toml (and rayVersion in k8s/).
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311

# sam2's optional CUDA post-processing extension needs nvcc at build time; Visus does not use it.
ENV SAM2_BUILD_CUDA=0
COPY --chown=ray:users pyproject.toml README.md /tmp/visus/
COPY --chown=ray:users serve /tmp/visus/serve
COPY --chown=ray:users deployments /tmp/visus/deployments
COPY --chown=ray:users models /tmp/visus/models
# The pins (torch, torchvision, ray[serve], transformers, diffusers, ...) come from pyproject.toml;
# the `cluster` extra adds s3fs for s3:// storage (VISUS_STORAGE_URL).
RUN pip install --no-cache-dir "/tmp/visus[cluster]" && rm -rf /tmp/visus

WORKDIR /home/ray
ENV VISUS_HOME=/home/ray/.visus
