# Shared by .ci/run and docs: the production configuration pointed at loopback test servers.
export SIFT_CI_PG_PORT=${SIFT_CI_PG_PORT:-55432}
export SIFT_CI_REDIS_PORT=${SIFT_CI_REDIS_PORT:-56379}
export SIFT_CI_S3_PORT=${SIFT_CI_S3_PORT:-58333}
# SeaweedFS internals; each gRPC port is set explicitly (its default, port + 10000, can overflow).
export SIFT_CI_WEED_MASTER_PORT=${SIFT_CI_WEED_MASTER_PORT:-49333}
export SIFT_CI_WEED_VOLUME_PORT=${SIFT_CI_WEED_VOLUME_PORT:-48080}
export SIFT_CI_WEED_FILER_PORT=${SIFT_CI_WEED_FILER_PORT:-48888}

export SIFT_ENV=production
export SIFT_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:${SIFT_CI_PG_PORT}/sift"
export SIFT_BROKER_URL="redis://127.0.0.1:${SIFT_CI_REDIS_PORT}/0"
export SIFT_BLOB_URL="s3://sift-ci"
export SIFT_S3_ENDPOINT_URL="http://127.0.0.1:${SIFT_CI_S3_PORT}"
export SIFT_EMBEDDED_WORKER=false
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-sift-access}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-sift-secret-for-tests}
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
# Seals client secrets (judge headers, tenant secrets); a test key, never a production one.
export SIFT_SECRET_KEY=${SIFT_SECRET_KEY:-4Dk0d5qCqBH3o3pHqW2d3a1yRzGZbq8q3v9o9r2Yb0Y=}

# Tests reuse these servers instead of starting their own.
export SIFT_TEST_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:${SIFT_CI_PG_PORT}/sift_test"
export SIFT_TEST_BROKER_URL="redis://127.0.0.1:${SIFT_CI_REDIS_PORT}/1"
export SIFT_TEST_S3_ENDPOINT_URL="$SIFT_S3_ENDPOINT_URL"
