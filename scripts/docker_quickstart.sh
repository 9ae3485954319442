#!/usr/bin/env bash
# Build the CPU image where no image registry can be reached, and run the README's quick start in it.
#
#   sudo scripts/docker_quickstart.sh          (needs docker.io and debootstrap: apt-get install docker.io debootstrap)
#
# The base is a local Debian 12 (Python 3.11) made with debootstrap and `docker import`, carrying this
# machine's CA bundle and pip's pointer to it (so pip works behind a TLS-inspecting proxy); torch comes
# from PyPI when download.pytorch.org cannot be reached. Then: the server starts, reports healthy,
# `landmarks detect` and `landmarks categories` work inside, the HTTP plane answers from outside, and
# `docker stop` (SIGTERM) ends it with exit status 0.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=landmarks-base:bookworm
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    root=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$root" \
        http://deb.debian.org/debian
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
    tar -C "$root" -c . | docker import - "$BASE"
    rm -rf "$root"
fi
torch_index=https://download.pytorch.org/whl/cpu
curl -sfI --max-time 10 "$torch_index/" >/dev/null || torch_index=https://pypi.org/simple
docker build --network host --build-arg BASE="$BASE" --build-arg TORCH_INDEX="$torch_index" -t landmarks .

docker rm -f landmarks-quickstart >/dev/null 2>&1 || true
docker run -d --name landmarks-quickstart -p 127.0.0.1:18080:8080 -p 127.0.0.1:15051:50051 landmarks >/dev/null
trap 'docker rm -f landmarks-quickstart >/dev/null 2>&1 || true' EXIT
for _ in $(seq 90); do
    [ "$(docker inspect --format '{{.State.Health.Status}}' landmarks-quickstart)" = healthy ] && break
    sleep 2
done
docker inspect --format 'health: {{.State.Health.Status}}' landmarks-quickstart
docker exec landmarks-quickstart landmarks detect --category faces examples/face.jpg --draw /tmp/face.png | head -4
docker exec landmarks-quickstart landmarks categories
docker exec landmarks-quickstart python -c "from landmarks import Detector; print(Detector.load('faces').detect('examples/face.jpg'))"
curl -s -X POST --data-binary @examples/cat.jpg -H 'Content-Type: image/jpeg' 'localhost:18080/v1/detect?category=cats' \
    | python3 -c "import json, sys; d = json.load(sys.stdin); print('HTTP:', d['category'], len(d['landmarks']), 'landmarks')"
docker stop landmarks-quickstart >/dev/null
docker inspect --format 'stopped with exit status {{.State.ExitCode}}' landmarks-quickstart
