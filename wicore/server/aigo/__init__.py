"""The AIgo REST surface (`/api/v1`): its protocol (request and response models) and routes."""
