#!/usr/bin/env bash
# The network cluster/gcp.yaml uses: a custom-mode VPC "mgd-ray" (no default rules) with two
# firewall rules: SSH (22/tcp) from ONE CIDR to nodes tagged mgd-ray, and any traffic between
# nodes tagged mgd-ray. Plus the workers' service account with access to one bucket.
#   PROJECT=my-project SSH_CIDR=$(curl -s https://checkip.amazonaws.com)/32 BUCKET=my-bucket cluster/gcp-network.sh
set -euo pipefail
: "${PROJECT:?set PROJECT}"
: "${SSH_CIDR:?set SSH_CIDR, e.g. 203.0.113.7/32}"
REGION=${REGION:-us-central1}
case "$SSH_CIDR" in
  0.0.0.0/0|::/0) echo "refusing to open SSH to the whole internet; use your own address/32" >&2; exit 1 ;;
esac
gcloud compute networks create mgd-ray --project "$PROJECT" --subnet-mode=custom
gcloud compute networks subnets create mgd-ray --project "$PROJECT" --network=mgd-ray \
  --region="$REGION" --range=10.42.0.0/20
gcloud compute firewall-rules create mgd-ray-ssh --project "$PROJECT" --network=mgd-ray \
  --direction=INGRESS --allow=tcp:22 --source-ranges="$SSH_CIDR" --target-tags=mgd-ray
gcloud compute firewall-rules create mgd-ray-internal --project "$PROJECT" --network=mgd-ray \
  --direction=INGRESS --allow=tcp,udp,icmp --source-tags=mgd-ray --target-tags=mgd-ray
gcloud iam service-accounts create mgd-ray-worker --project "$PROJECT" --display-name="mgd-ray GPU workers"
if [ -n "${BUCKET:-}" ]; then
  gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" \
    --member="serviceAccount:mgd-ray-worker@$PROJECT.iam.gserviceaccount.com" --role=roles/storage.objectAdmin
fi
