module github.com/edgeagent/edgeagent

go 1.26.8
