"""Job lifecycle: reconcile desired vs observed replicas, apply policies."""
