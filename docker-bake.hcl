# Both images in one command (helm/pingvas/README.md):
#   REGISTRY=000000000000.dkr.ecr.ap-northeast-2.amazonaws.com TAG=0.1.0 docker buildx bake --push
variable "REGISTRY" { default = "pingvas" }
variable "TAG" { default = "dev" }

group "default" { targets = ["services", "worker"] }

target "services" {
  dockerfile = "Dockerfile"
  target     = "services"
  tags       = ["${REGISTRY}/pingvas:${TAG}"]
  # Graviton runs the services (the pingvas-cluster chart's CPU NodePool).
  platforms  = ["linux/amd64", "linux/arm64"]
}

target "worker" {
  dockerfile = "Dockerfile"
  target     = "worker"
  tags       = ["${REGISTRY}/pingvas-worker:${TAG}"]
  platforms  = ["linux/amd64"]
}
