#!/usr/bin/env bash
# SeaweedFS S3 identity for the credentials in the environment, so request signatures are checked.
cat <<JSON
{"identities": [{"name": "sift", "credentials": [{"accessKey": "${AWS_ACCESS_KEY_ID}", "secretKey": "${AWS_SECRET_ACCESS_KEY}"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
