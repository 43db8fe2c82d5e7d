// The test node's sandbox ("pause") program: built here because no registry serves the
// upstream pause image. Standard library only, so go.sum stays empty.
module elastiserve.local/k8s-assets/pause

go 1.24
