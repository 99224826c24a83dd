#!/usr/bin/env bash
# The security group cluster/aws.yaml names (sg-REPLACE-ME): SSH (22/tcp) from ONE CIDR, and any
# traffic between members of the group (Ray's GCS 6379, raylets, object manager 8076, workers).
# Nothing else comes in. Prints the group id.
#   VPC_ID=vpc-... SSH_CIDR=$(curl -s https://checkip.amazonaws.com)/32 REGION=us-east-1 cluster/aws-network.sh
set -euo pipefail
: "${VPC_ID:?set VPC_ID (the VPC of the subnets in cluster/aws.yaml)}"
: "${SSH_CIDR:?set SSH_CIDR, e.g. 203.0.113.7/32}"
REGION=${REGION:-us-east-1}
NAME=${NAME:-mgd-ray}
case "$SSH_CIDR" in
  0.0.0.0/0|::/0) echo "refusing to open SSH to the whole internet; use your own address/32" >&2; exit 1 ;;
esac
SG=$(aws ec2 create-security-group --region "$REGION" --vpc-id "$VPC_ID" --group-name "$NAME" \
      --description "mgd-ray: SSH from one CIDR, all traffic inside the group" --query GroupId --output text)
aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$SG" \
  --ip-permissions "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=$SSH_CIDR,Description=ssh}]" >/dev/null
aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$SG" \
  --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$SG,Description=ray-intra-cluster}]" >/dev/null
echo "$SG"
