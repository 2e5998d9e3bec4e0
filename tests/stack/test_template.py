"""template.yaml, deployed: the SAM transform run here, the stack created on the
local moto server, and every setting that keeps a run safe checked where it ends
up. Live resources where moto makes them; the translated template where moto
skips or drops something (alarms, the queue policy, RedriveAllowPolicy, managed
policy attachments, logging configuration, the dispatcher's dead-letter config).

Two deployments: the defaults, and one with a KMS key for the secrets and every
other branch of the template's conditions taken the other way.

Run with `make test-template` (part of `make test`); needs `make stack` (moto).
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import io
import json
import re
import time
import uuid
import zipfile
from pathlib import Path

import boto3
import botocore.parsers
import pytest
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
ARGS_RS = ROOT / "src" / "bin" / "backfill" / "args.rs"
# No other test uses this region on the shared moto server.
REGION = "eu-north-1"
PARTITION = "aws"

# The metrics the functions emit (Embedded Metric Format), by function.
METRICS = {
    "worker": [
        "DocumentsEmbedded", "DocumentsSkipped", "DocumentsFailed", "Tokens", "CostUsd",
        "ApiRequests", "ApiThrottled", "ApiServerErrors", "ApiLatency", "BatchDuration",
        "RateWait", "BatchesDone", "BatchesFailed",
    ],
    "poller": ["DocumentsEmbedded", "Tokens", "CostUsd", "JobsSubmitted", "JobsCollected"],
    "dispatcher": ["BatchesQueued", "DocumentsQueued", "EstimatedTokens", "EstimatedCostUsd", "DispatchDuration"],
}

# The two deployments. Stack parameters are strings, as CloudFormation takes them.
SCENARIOS = {
    "defaults": {},
    "kms": {
        "SecretKmsKeyArn": "arn:aws:kms:{region}:{account}:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "TpmLimit": "0",
        "WorkerTimeoutSeconds": "900",
        "MaximumBatchingWindowInSeconds": "300",
        "WorkerBatchSize": "4",
        "WorkerMaximumConcurrency": "3",
        "MaxReceiveCount": "7",
        "LogRetentionDays": "14",
        "DispatcherReservedConcurrency": "0",
        "PollerEnabled": "false",
        "AlarmTopicArn": "arn:aws:sns:{region}:{account}:backfill-alarms",
        "MetricsNamespace": "Custom/Backfill",
        "NoProgressMinutes": "45",
        "OldestMessageAlarmSeconds": "3600",
        "KeyRefreshMinutes": "5",
    },
}

NO_VALUE = object()


# ---------------------------------------------------------------- helpers


def moto_endpoint() -> str:
    env = ROOT / ".stack" / "env"
    if not env.exists():
        pytest.fail(f"{env.relative_to(ROOT)} is missing: start the local stack with `make stack`")
    for line in env.read_text().splitlines():
        if line.startswith("AWS_ENDPOINT_URL="):
            return line.split("=", 1)[1].strip()
    pytest.fail("AWS_ENDPOINT_URL (moto) is not in .stack/env: run `make stack`")


def client(service: str, endpoint: str):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def policy_document(doc):
    """moto answers some policy documents as a Python dict's repr, not JSON."""
    if isinstance(doc, dict):
        return doc
    try:
        return json.loads(doc)
    except json.JSONDecodeError:
        return ast.literal_eval(doc)


def as_list(v):
    return v if isinstance(v, list) else [v]


class Resolver:
    """Resolves the intrinsics the translated template uses, the way
    CloudFormation would for one deployment: for what moto does not create."""

    def __init__(self, cf, params, physical, attrs, account, stack_name):
        self.cf = cf
        self.params = params
        self.physical = physical
        self.attrs = attrs
        self.pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": account,
            "AWS::Partition": PARTITION,
            "AWS::StackName": stack_name,
            "AWS::URLSuffix": "amazonaws.com",
        }

    def param(self, name):
        spec = self.cf["Parameters"][name]
        raw = self.params.get(name, spec.get("Default"))
        if spec["Type"] == "Number":
            return float(raw) if "." in str(raw) else int(raw)
        return raw

    def ref(self, name):
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.cf["Parameters"]:
            return self.param(name)
        return self.physical[name]

    def condition(self, name) -> bool:
        return bool(self(self.cf["Conditions"][name]))

    def sub(self, text, variables):
        def one(m):
            key = m.group(1)
            if key in variables:
                return str(variables[key])
            if "." in key and not key.startswith("AWS::"):
                return str(self.attrs[tuple(key.split(".", 1))])
            return str(self.ref(key))

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def __call__(self, v):
        if isinstance(v, list):
            return [x for x in (self(i) for i in v) if x is not NO_VALUE]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (k, a), = v.items()
            if k == "Ref":
                return self.ref(a)
            if k == "Fn::GetAtt":
                return self.attrs[tuple(a)]
            if k == "Fn::If":
                return self(a[1] if self.condition(a[0]) else a[2])
            if k == "Condition":
                return self.condition(a)
            if k == "Fn::Not":
                return not self(a[0])
            if k == "Fn::Equals":
                return str(self(a[0])) == str(self(a[1]))
            if k == "Fn::And":
                return all(self(x) for x in a)
            if k == "Fn::Or":
                return any(self(x) for x in a)
            if k == "Fn::FindInMap":
                m, k1, k2 = (self(x) for x in a)
                return self.cf["Mappings"][m][str(k1)][k2]
            if k == "Fn::Join":
                return a[0].join(str(x) for x in self(a[1]))
            if k == "Fn::Sub":
                if isinstance(a, str):
                    return self.sub(a, {})
                return self.sub(a[0], {n: self(x) for n, x in a[1].items()})
        return {k: x for k, x in ((k, self(x)) for k, x in v.items()) if x is not NO_VALUE}


def translate(sam: dict, params: dict, code_uri: str) -> dict:
    sam = copy.deepcopy(sam)
    sam["Globals"]["Function"]["CodeUri"] = code_uri

    class NoManagedPolicies:
        # The template names no managed policy by name; SAM's own are ARNs.
        def load(self):
            return {}

    return transform(sam, params, NoManagedPolicies())


def for_moto(cf: dict, resolve: Resolver) -> dict:
    """moto 5.2.5 turns `Fn::If [Cond, policy, AWS::NoValue]` items of a role's
    Policies into nulls and fails the role: take the branch here instead."""
    cf = copy.deepcopy(cf)
    for res in cf["Resources"].values():
        if res["Type"] != "AWS::IAM::Role":
            continue
        kept = []
        for p in res["Properties"].get("Policies", []):
            if "Fn::If" in p:
                cond, yes, no = p["Fn::If"]
                p = yes if resolve.condition(cond) else no
                if p == {"Ref": "AWS::NoValue"}:
                    continue
            kept.append(p)
        res["Properties"]["Policies"] = kept
    return cf


def cli_commands():
    """The subcommands and long flags the backfill CLI has, from its clap definitions."""
    src = ARGS_RS.read_text()
    enum = re.search(r"pub enum Command \{(.*?)\n\}", src, re.S).group(1)
    subs = {re.sub(r"(?<!^)([A-Z])", r"-\1", v).lower() for v in re.findall(r"^\s+([A-Z]\w*)\(", enum, re.M)}
    flags = set(re.findall(r'long\s*=\s*"([a-z-]+)"', src))
    for field in re.findall(r"#\[arg\(long[^\]]*\)\]\s*(?:///[^\n]*\s*)*pub (\w+):", src):
        flags.add(field.replace("_", "-"))
    return subs, flags


def backfill_commands(text: str):
    """`backfill SUB ...` commands in a description: (SUB, [--flags])."""
    found = []
    for m in re.finditer(r"`backfill ([a-z-]+)([^`]*)`", text):
        found.append((m.group(1), re.findall(r"--([a-z-]+)", m.group(2))))
    for m in re.finditer(r"(?<![\w-])--([a-z-]+)", re.sub(r"`backfill [^`]*`", "", text)):
        found.append((None, [m.group(1)]))
    return found


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sam():
    return yaml_parse(TEMPLATE.read_text())


@pytest.fixture(scope="module")
def endpoint():
    return moto_endpoint()


class Deployment:
    pass


@pytest.fixture(scope="module", params=list(SCENARIOS), ids=list(SCENARIOS))
def stack(request, sam, endpoint):
    d = Deployment()
    d.scenario = request.param
    d.endpoint = endpoint
    d.account = client("sts", endpoint).get_caller_identity()["Account"]
    d.name = f"ebtpl-{d.scenario}-{uuid.uuid4().hex[:8]}"
    d.params = {
        "SupabaseUrl": "https://abcdefghijklmnop.supabase.co",
        "SupabaseSecretArn": f"arn:aws:secretsmanager:{REGION}:{d.account}:secret:embed-backfill/supabase-AbC123",
        "OpenAISecretArn": f"arn:aws:secretsmanager:{REGION}:{d.account}:secret:embed-backfill/openai-XyZ789",
    }
    for k, v in SCENARIOS[d.scenario].items():
        d.params[k] = v.format(region=REGION, account=d.account)

    s3 = client("s3", endpoint)
    bucket = d.name
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n")
    s3.put_object(Bucket=bucket, Key="code.zip", Body=code.getvalue())
    d.cfn = client("cloudformation", endpoint)

    def clean_up():
        # Each step alone: a stack moto failed half way may refuse deletion.
        for step in (
            lambda: d.cfn.delete_stack(StackName=d.name),
            lambda: s3.delete_object(Bucket=bucket, Key="code.zip"),
            lambda: s3.delete_bucket(Bucket=bucket),
        ):
            try:
                step()
            except Exception as e:  # noqa: BLE001 - clean-up must not hide the test's own failure
                print(f"clean-up of {d.name}: {e}")

    request.addfinalizer(clean_up)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        d.cf = translate(sam, d.params, f"s3://{bucket}/code.zip")
    assert "Transform" not in d.cf

    pre = Resolver(d.cf, d.params, {}, {}, d.account, d.name)
    started = time.monotonic()
    try:
        d.cfn.create_stack(
            StackName=d.name,
            TemplateBody=json.dumps(for_moto(d.cf, pre)),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in d.params.items()],
            Capabilities=["CAPABILITY_IAM"],
        )
    except botocore.parsers.ResponseParserError as e:
        pytest.fail(f"moto failed creating the stack (its traceback is in .stack/logs/moto.log): {e}")
    while True:
        st = d.cfn.describe_stacks(StackName=d.name)["Stacks"][0]
        if not st["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() - started > 120:
            break
        time.sleep(0.5)
    if st["StackStatus"] != "CREATE_COMPLETE":
        events = d.cfn.describe_stack_events(StackName=d.name)["StackEvents"]
        reasons = [f"{e.get('LogicalResourceId')}: {e.get('ResourceStatusReason')}" for e in events if e.get("ResourceStatusReason")]
        pytest.fail(f"{d.name} ended {st['StackStatus']}: {st.get('StackStatusReason')}; {reasons}")
    d.outputs = {o["OutputKey"]: o["OutputValue"] for o in st.get("Outputs", [])}
    d.resources = d.cfn.describe_stack_resources(StackName=d.name)["StackResources"]
    d.physical = {
        r["LogicalResourceId"]: r.get("PhysicalResourceId")
        for r in d.resources
        if "LogicalResourceId" in r
    }

    d.sqs = client("sqs", endpoint)
    d.lam = client("lambda", endpoint)
    d.iam = client("iam", endpoint)
    d.queues = {}
    attrs = {}
    for logical, suffix in (("WorkQueue", "work"), ("DeadLetterQueue", "dlq")):
        url = d.sqs.get_queue_url(QueueName=f"{d.name}-{suffix}")["QueueUrl"]
        a = d.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        d.queues[logical] = a
        attrs[(logical, "Arn")] = a["QueueArn"]
        attrs[(logical, "QueueName")] = a["QueueArn"].rsplit(":", 1)[1]
    d.fn = {}
    for f in ("dispatcher", "worker", "poller"):
        d.fn[f] = d.lam.get_function(FunctionName=f"{d.name}-{f}")
        attrs[(f"{f.capitalize()}Function", "Arn")] = d.fn[f]["Configuration"]["FunctionArn"]
    d.resolve = Resolver(d.cf, d.params, d.physical, attrs, d.account, d.name)

    return d


def resource(d, logical):
    return d.cf["Resources"][logical]


def p(d, name):
    return d.resolve.param(name)


def arn(d, service, rest):
    return f"arn:{PARTITION}:{service}:{REGION}:{d.account}:{rest}"


# ---------------------------------------------------------------- the stack


def test_stack_is_created(stack):
    created = {r["LogicalResourceId"] for r in stack.resources if "LogicalResourceId" in r}
    skipped = {
        logical: res["Type"]
        for logical, res in stack.cf["Resources"].items()
        if logical not in created
    }
    # moto 5.2.5 skips these two types; everything else must exist for real.
    assert set(skipped.values()) <= {"AWS::SQS::QueuePolicy", "AWS::CloudWatch::Alarm"}, skipped
    assert stack.outputs["DashboardName"] == stack.name
    assert stack.outputs["WorkerFunctionName"] == f"{stack.name}-worker"


# ---------------------------------------------------------------- queues


def test_visibility_timeout_covers_every_worker_timeout(sam):
    """For every worker timeout the template allows: 6 x timeout + the largest
    batching window the mapping may be given (AWS's rule for SQS event sources)."""
    allowed = sam["Parameters"]["WorkerTimeoutSeconds"]["AllowedValues"]
    window_max = sam["Parameters"]["MaximumBatchingWindowInSeconds"]["MaxValue"]
    mapping = sam["Mappings"]["VisibilityTimeout"]
    assert set(mapping) == set(allowed)
    for t in allowed:
        seconds = mapping[t]["Seconds"]
        assert seconds >= 6 * int(t) + window_max, (t, seconds)
        assert seconds <= 43200, "SQS's maximum visibility timeout is 12 hours"
    q = sam["Resources"]["WorkQueue"]["Properties"]
    assert q["VisibilityTimeout"] == {"Fn::FindInMap": ["VisibilityTimeout", {"Ref": "WorkerTimeoutSeconds"}, "Seconds"]}
    w = sam["Resources"]["WorkerFunction"]["Properties"]
    assert w["Timeout"] == {"Ref": "WorkerTimeoutSeconds"}
    window = w["Events"]["Batches"]["Properties"]["MaximumBatchingWindowInSeconds"]
    assert window == {"Ref": "MaximumBatchingWindowInSeconds"}


def test_visibility_timeout_live(stack):
    timeout = stack.fn["worker"]["Configuration"]["Timeout"]
    assert timeout == int(p(stack, "WorkerTimeoutSeconds"))
    (esm,) = stack.lam.list_event_source_mappings(FunctionName=f"{stack.name}-worker")["EventSourceMappings"]
    window = esm["MaximumBatchingWindowInSeconds"]
    visibility = int(stack.queues["WorkQueue"]["VisibilityTimeout"])
    assert visibility >= 6 * timeout + window, (visibility, timeout, window)


def test_queues(stack):
    work, dlq = stack.queues["WorkQueue"], stack.queues["DeadLetterQueue"]
    for q in (work, dlq):
        # 14 days, the most SQS keeps a message: an expired one reaches no dead-letter queue.
        assert q["MessageRetentionPeriod"] == "1209600"
        assert q["SqsManagedSseEnabled"] == "true"
    redrive = json.loads(work["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == p(stack, "MaxReceiveCount")
    assert "RedrivePolicy" not in dlq


def test_redrive_allowed_from_the_work_queue_only(stack):
    # moto drops RedriveAllowPolicy: from the template, resolved for this stack.
    props = stack.resolve(resource(stack, "DeadLetterQueue")["Properties"])
    assert props["RedriveAllowPolicy"] == {
        "redrivePermission": "byQueue",
        "sourceQueueArns": [stack.queues["WorkQueue"]["QueueArn"]],
    }


def test_queues_refuse_plain_http(stack):
    # moto skips AWS::SQS::QueuePolicy: from the template.
    props = stack.resolve(resource(stack, "QueuesTlsOnly")["Properties"])
    assert sorted(props["Queues"]) == sorted([stack.physical["WorkQueue"], stack.physical["DeadLetterQueue"]])
    (st,) = props["PolicyDocument"]["Statement"]
    assert st["Effect"] == "Deny" and st["Action"] == "sqs:*" and st["Principal"] == "*"
    assert sorted(st["Resource"]) == sorted(q["QueueArn"] for q in stack.queues.values())
    assert st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_event_source_mapping(stack):
    (esm,) = stack.lam.list_event_source_mappings(FunctionName=f"{stack.name}-worker")["EventSourceMappings"]
    assert esm["EventSourceArn"] == stack.queues["WorkQueue"]["QueueArn"]
    assert esm["FunctionArn"] == stack.fn["worker"]["Configuration"]["FunctionArn"]
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert esm["BatchSize"] == p(stack, "WorkerBatchSize")
    assert esm["MaximumBatchingWindowInSeconds"] == p(stack, "MaximumBatchingWindowInSeconds")
    assert esm["ScalingConfig"] == {"MaximumConcurrency": p(stack, "WorkerMaximumConcurrency")}
    assert esm["State"] == "Enabled"


# ---------------------------------------------------------------- functions


def test_functions(stack):
    cfg = {f: stack.fn[f]["Configuration"] for f in stack.fn}
    assert cfg["worker"]["Timeout"] == int(p(stack, "WorkerTimeoutSeconds"))
    assert cfg["worker"]["MemorySize"] == p(stack, "WorkerMemoryMB")
    assert cfg["dispatcher"]["Timeout"] == p(stack, "DispatcherTimeoutSeconds")
    assert cfg["poller"]["Timeout"] == 900
    reserved = {f: stack.fn[f].get("Concurrency", {}).get("ReservedConcurrentExecutions") for f in stack.fn}
    want = p(stack, "DispatcherReservedConcurrency")
    assert reserved == {"dispatcher": want or None, "worker": None, "poller": 1}

    for f, c in cfg.items():
        env = {k: str(v) for k, v in c["Environment"]["Variables"].items()}
        assert env["BACKFILL_SUPABASE_SECRET_ID"] == stack.params["SupabaseSecretArn"], f
        assert env["BACKFILL_KEY_REFRESH_MINUTES"] == str(p(stack, "KeyRefreshMinutes")), f
        assert env["BACKFILL_METRICS_NAMESPACE"] == p(stack, "MetricsNamespace"), f
        assert "BACKFILL_SECRET_ID" not in env, f
        if f == "dispatcher":
            # The dispatcher never calls the embeddings API and may not read its key.
            assert "BACKFILL_OPENAI_SECRET_ID" not in env
        else:
            assert env["BACKFILL_OPENAI_SECRET_ID"] == stack.params["OpenAISecretArn"], f
            tpm = p(stack, "TpmLimit")
            assert env["BACKFILL_TPM_LIMIT"] == (str(tpm) if tpm else ""), f

    # moto ignores these: from the template.
    for f in ("Dispatcher", "Worker", "Poller"):
        props = resource(stack, f"{f}Function")["Properties"]
        assert props["Architectures"] == ["arm64"]
        assert stack.resolve(props["LoggingConfig"]) == {
            "LogFormat": "JSON",
            # EMF lines are INFO log lines: a higher level would drop the metrics.
            "ApplicationLogLevel": "INFO",
            "LogGroup": f"/aws/lambda/{stack.name}-{f.lower()}",
        }
    disp = resource(stack, "DispatcherFunction")["Properties"]
    assert disp["RecursiveLoop"] == "Allow"
    assert stack.resolve(disp["DeadLetterConfig"]) == {"TargetArn": stack.queues["DeadLetterQueue"]["QueueArn"]}


def test_poller_schedule(stack):
    rules = client("events", stack.endpoint).list_rules(NamePrefix=f"{stack.name}-PollerFunctionTick")["Rules"]
    (rule,) = rules
    assert rule["ScheduleExpression"] == p(stack, "PollerSchedule")
    assert rule["State"] == ("ENABLED" if p(stack, "PollerEnabled") == "true" else "DISABLED")


def test_log_groups(stack):
    logs = client("logs", stack.endpoint)
    groups = {
        g["logGroupName"]: g.get("retentionInDays")
        for g in logs.describe_log_groups(logGroupNamePrefix=f"/aws/lambda/{stack.name}-")["logGroups"]
    }
    days = p(stack, "LogRetentionDays")
    assert groups == {f"/aws/lambda/{stack.name}-{f}": days for f in ("dispatcher", "worker", "poller")}


# ---------------------------------------------------------------- IAM


def expected_permissions(d):
    """Each function's (action, resource) pairs: the README's least-privilege table."""
    supabase, openai = d.params["SupabaseSecretArn"], d.params["OpenAISecretArn"]
    work, dlq = d.queues["WorkQueue"]["QueueArn"], d.queues["DeadLetterQueue"]["QueueArn"]
    dispatcher = arn(d, "lambda", f"function:{d.name}-dispatcher")
    want = {
        "dispatcher": {
            ("sqs:SendMessage*", work),
            ("sqs:SendMessage", dlq),
            ("secretsmanager:GetSecretValue", supabase),
            ("lambda:InvokeFunction", dispatcher),
            ("lambda:InvokeFunction", dispatcher + ":*"),
        },
        "worker": {
            ("secretsmanager:GetSecretValue", supabase),
            ("secretsmanager:GetSecretValue", openai),
            ("sqs:ReceiveMessage", work),
            ("sqs:DeleteMessage", work),
            ("sqs:GetQueueAttributes", work),
        },
        "poller": {("secretsmanager:GetSecretValue", supabase), ("secretsmanager:GetSecretValue", openai)},
    }
    key = d.params.get("SecretKmsKeyArn")
    if key:
        for f in want:
            want[f].add(("kms:Decrypt", key))
    return want


MANAGED = {
    "dispatcher": {"service-role/AWSLambdaBasicExecutionRole"},
    # Its own role, without the SQS one SAM would attach (SQS actions on `*`).
    "worker": {"service-role/AWSLambdaBasicExecutionRole"},
    "poller": {"service-role/AWSLambdaBasicExecutionRole"},
}


def role_statements(d, f):
    role = d.fn[f]["Configuration"]["Role"].rsplit("/", 1)[1]
    trust = policy_document(d.iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"])
    (st,) = trust["Statement"]
    assert st["Principal"] == {"Service": ["lambda.amazonaws.com"]} and as_list(st["Action"]) == ["sts:AssumeRole"]
    statements = []
    for name in d.iam.list_role_policies(RoleName=role)["PolicyNames"]:
        doc = policy_document(d.iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])
        statements += as_list(doc["Statement"])
    return statements


def grants(statements, action, res):
    return any(
        s["Effect"] == "Allow"
        and any(fnmatch.fnmatchcase(action, a) for a in as_list(s.get("Action", [])))
        and any(fnmatch.fnmatchcase(res, r) for r in as_list(s.get("Resource", [])))
        for s in statements
    )


@pytest.mark.parametrize("function", ["dispatcher", "worker", "poller"])
def test_least_privilege(stack, function):
    statements = role_statements(stack, function)
    got = set()
    for s in statements:
        assert s["Effect"] == "Allow", s
        assert not {"NotAction", "NotResource"} & set(s), s
        got |= {(a, r) for a in as_list(s["Action"]) for r in as_list(s["Resource"])}
    assert got == expected_permissions(stack)[function]

    # moto does not attach managed policies: from the template.
    role = stack.resolve(resource(stack, f"{function.capitalize()}FunctionRole")["Properties"])
    prefix = f"arn:{PARTITION}:iam::aws:policy/"
    assert {a.removeprefix(prefix) for a in role["ManagedPolicyArns"]} == MANAGED[function]

    key = stack.params.get("SecretKmsKeyArn")
    for s in statements:
        if "kms:Decrypt" in as_list(s["Action"]):
            readable = [stack.params["SupabaseSecretArn"]]
            if function != "dispatcher":
                readable.append(stack.params["OpenAISecretArn"])
            assert s["Condition"] == {
                "StringEquals": {
                    "kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com",
                    "kms:EncryptionContext:SecretARN": readable[0] if len(readable) == 1 else readable,
                }
            }
    assert any("kms:Decrypt" in as_list(s["Action"]) for s in statements) == bool(key)


def test_only_the_worker_and_poller_read_the_openai_key(stack):
    openai = stack.params["OpenAISecretArn"]
    supabase = stack.params["SupabaseSecretArn"]
    for f in ("dispatcher", "worker", "poller"):
        st = role_statements(stack, f)
        assert grants(st, "secretsmanager:GetSecretValue", supabase), f
        assert grants(st, "secretsmanager:GetSecretValue", openai) == (f != "dispatcher"), f


# ---------------------------------------------------------------- alarms

# Each alarm: its metrics as (namespace, name, dimension name, resource), the
# threshold and comparison, and the commands its description must name.
def expected_alarms(d):
    ns = p(d, "MetricsNamespace")
    work = ("AWS/SQS", "QueueName", d.resolve({"Fn::GetAtt": ["WorkQueue", "QueueName"]}))
    dlq = ("AWS/SQS", "QueueName", d.resolve({"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}))
    fn = {f: f"{d.name}-{f}" for f in ("dispatcher", "worker", "poller")}
    return {
        "DeadLetterAlarm": dict(
            metrics={(dlq[0], "ApproximateNumberOfMessagesVisible", dlq[1], dlq[2])},
            threshold=0, op="GreaterThanThreshold", period=300, evaluation=(1, None),
            commands=["backfill redrive", "backfill status", "backfill dispatch --continue"],
        ),
        "OldestMessageAlarm": dict(
            metrics={(work[0], "ApproximateAgeOfOldestMessage", work[1], work[2])},
            threshold=p(d, "OldestMessageAlarmSeconds"), op="GreaterThanThreshold", period=300, evaluation=(1, None),
            commands=["backfill retry-failed", "--unfinished"],
        ),
        "NoProgressAlarm": dict(
            metrics={
                (work[0], "ApproximateNumberOfMessagesVisible", work[1], work[2]),
                (ns, "BatchesDone", "Function", fn["worker"]),
            },
            threshold=1, op="GreaterThanOrEqualToThreshold", period=60,
            evaluation=(p(d, "NoProgressMinutes"), p(d, "NoProgressMinutes")),
            commands=["backfill status", "backfill redrive"],
        ),
        "ApiThrottledAlarm": dict(
            metrics={(ns, "ApiThrottled", "Function", fn["worker"]), (ns, "ApiRequests", "Function", fn["worker"])},
            threshold=10, op="GreaterThanThreshold", period=900, evaluation=(1, None),
            commands=["--tpm", "TpmLimit"],
        ),
        "WorkerErrorAlarm": dict(
            metrics={("AWS/Lambda", "Errors", "FunctionName", fn["worker"])},
            threshold=0, op="GreaterThanThreshold", period=300, evaluation=(1, None),
            commands=["backfill redrive"],
        ),
        "WorkerThrottleAlarm": dict(
            metrics={("AWS/Lambda", "Throttles", "FunctionName", fn["worker"])},
            threshold=0, op="GreaterThanThreshold", period=300, evaluation=(3, 2),
            commands=["backfill redrive", "WorkerMaximumConcurrency"],
        ),
        "DispatcherErrorAlarm": dict(
            metrics={("AWS/Lambda", "Errors", "FunctionName", fn["dispatcher"])},
            threshold=0, op="GreaterThanThreshold", period=300, evaluation=(1, None),
            commands=["backfill dispatch --continue"],
        ),
        "PollerErrorAlarm": dict(
            metrics={("AWS/Lambda", "Errors", "FunctionName", fn["poller"])},
            threshold=0, op="GreaterThanThreshold", period=300, evaluation=(3, 3),
            commands=["backfill poll --run"],
        ),
    }


def alarms_on_moto(d):
    """moto skips AWS::CloudWatch::Alarm in stacks: each alarm, resolved for this
    stack, goes to CloudWatch's own API, whose request shapes botocore checks."""
    cw = client("cloudwatch", d.endpoint)
    names = {}
    for logical, res in d.cf["Resources"].items():
        if res["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = d.resolve(res["Properties"])
        name = f"{d.name}-{logical}"
        cw.put_metric_alarm(AlarmName=name, **props)
        names[name] = logical
    got = {}
    for a in cw.describe_alarms(AlarmNamePrefix=f"{d.name}-")["MetricAlarms"]:
        got[names[a["AlarmName"]]] = a
    cw.delete_alarms(AlarmNames=list(names))
    return got


def alarm_metrics(a):
    if a.get("MetricName"):
        ((dim,),) = [a["Dimensions"]]
        return {(a["Namespace"], a["MetricName"], dim["Name"], dim["Value"])}, [a["Period"]]
    out, periods = set(), []
    for q in a["Metrics"]:
        if "MetricStat" in q:
            m = q["MetricStat"]["Metric"]
            ((dim,),) = [m["Dimensions"]]
            out.add((m["Namespace"], m["MetricName"], dim["Name"], dim["Value"]))
            periods.append(q["MetricStat"]["Period"])
    return out, periods


def test_alarms(stack):
    want = expected_alarms(stack)
    got = alarms_on_moto(stack)
    assert set(got) == set(want)
    topic = stack.params.get("AlarmTopicArn")
    for logical, w in want.items():
        a = got[logical]
        metrics, periods = alarm_metrics(a)
        assert metrics == w["metrics"], logical
        assert set(periods) == {w["period"]}, logical
        assert w["period"] % 60 == 0
        assert a["Threshold"] == w["threshold"], logical
        assert a["ComparisonOperator"] == w["op"], logical
        assert (a["EvaluationPeriods"], a.get("DatapointsToAlarm")) == w["evaluation"], logical
        # CloudWatch evaluates at most a day of periods of a minute or more.
        assert a["EvaluationPeriods"] * w["period"] <= 86400, logical
        # No data is an idle stack, not a stuck one.
        assert a["TreatMissingData"] == "notBreaching", logical
        assert a["AlarmActions"] == a["OKActions"] == ([topic] if topic else []), logical
        # CloudWatch keeps at most 1,024 characters of a description.
        assert len(a["AlarmDescription"]) <= 1024, logical
        for c in w["commands"]:
            assert c in " ".join(a["AlarmDescription"].split()), (logical, c)
        if a.get("Metrics"):
            ids = [q["Id"] for q in a["Metrics"]]
            assert len(set(ids)) == len(ids)
            (out,) = [q for q in a["Metrics"] if q.get("ReturnData", True)]
            used = set(re.findall(r"\b([a-z]\w*)\b(?!\s*\()", out["Expression"]))
            assert used <= set(ids), (logical, used)
            assert "FILL(" in out["Expression"], logical
    # NoProgressMinutes' maximum still fits CloudWatch's day of evaluation.
    assert stack.cf["Parameters"]["NoProgressMinutes"]["MaxValue"] * 60 <= 86400


def cloudwatch_math(expression, values):
    """A scalar reading of the CloudWatch metric math these alarms use (IF, FILL,
    AND, comparisons), one period at a time; a missing point is None."""
    py = re.sub(r"\bAND\b", " and ", re.sub(r"\bOR\b", " or ", expression))
    env = {
        "IF": lambda c, a, b: a if c else b,
        "FILL": lambda v, fill: fill if v is None else v,
        **values,
    }
    return eval(py, {"__builtins__": {}}, env)  # noqa: S307 - the template's own expression


def alarm_fires(a, values):
    (out,) = [q for q in a["Metrics"] if q.get("ReturnData", True)]
    v = cloudwatch_math(out["Expression"], values)
    return {
        "GreaterThanThreshold": v > a["Threshold"],
        "GreaterThanOrEqualToThreshold": v >= a["Threshold"],
    }[a["ComparisonOperator"]]


def test_alarm_math(sam):
    """The two metric math alarms fire on the cases they are for, and only then."""
    alarms = sam["Resources"]
    stuck = alarms["NoProgressAlarm"]["Properties"]
    assert alarm_fires(stuck, {"waiting": 40, "done": 0})
    assert alarm_fires(stuck, {"waiting": 40, "done": None})
    assert not alarm_fires(stuck, {"waiting": 40, "done": 2})
    assert not alarm_fires(stuck, {"waiting": 0, "done": 0})
    assert not alarm_fires(stuck, {"waiting": None, "done": None})
    throttled = alarms["ApiThrottledAlarm"]["Properties"]
    assert alarm_fires(throttled, {"throttled": 11, "requests": 100})
    assert not alarm_fires(throttled, {"throttled": 10, "requests": 100})
    assert not alarm_fires(throttled, {"throttled": None, "requests": 100})
    # Too few requests for a share to mean anything.
    assert not alarm_fires(throttled, {"throttled": 5, "requests": 8})
    assert not alarm_fires(throttled, {"throttled": None, "requests": None})


def test_alarm_and_dashboard_commands_exist(sam):
    """Every `backfill ...` command and --flag the alarms and the dashboard name
    is one the CLI has."""
    subs, flags = cli_commands()
    assert {"status", "redrive", "retry-failed", "dispatch", "poll"} <= subs
    texts = [
        r["Properties"]["AlarmDescription"]
        for r in sam["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    ]
    texts.append(sam["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0])
    for text in texts:
        found = backfill_commands(text)
        assert any(sub for sub, _ in found), text
        for sub, fl in found:
            assert sub is None or sub in subs, sub
            for f in fl:
                assert f in flags, f


# ---------------------------------------------------------------- dashboard


def test_dashboard(stack):
    cw = client("cloudwatch", stack.endpoint)
    raw = cw.get_dashboard(DashboardName=stack.physical["Dashboard"])["DashboardBody"]
    assert "${" not in raw
    body = json.loads(raw)
    widgets = body["widgets"]
    ns = p(stack, "MetricsNamespace")
    fn = {f: f"{stack.name}-{f}" for f in ("dispatcher", "worker", "poller")}
    named = set()
    for w in widgets:
        assert 0 <= w["x"] and w["x"] + w["width"] <= 24, w
        if w["type"] == "text":
            continue
        props = w["properties"]
        assert props["region"] == REGION
        ids = set()
        for m in props["metrics"]:
            opts = m[-1] if isinstance(m[-1], dict) else {}
            if "expression" in opts:
                continue
            spec = m[:-1] if opts else m
            namespace, metric, *dims = spec
            assert len(dims) == 2, m
            if namespace == ns:
                # [Function] only: Run is a run id, no use to a static widget.
                assert dims[0] == "Function" and dims[1] in fn.values(), m
            else:
                assert namespace in ("AWS/SQS", "AWS/Lambda"), m
            named.add((namespace, metric, dims[1]))
            ids.add(opts.get("id"))
        for m in props["metrics"]:
            if isinstance(m[-1], dict) and "expression" in m[-1]:
                refs = set(re.findall(r"\b([a-z]\w*)\b(?!\s*\()", m[-1]["expression"]))
                defined = ids | {x[-1]["id"] for x in props["metrics"] if isinstance(x[-1], dict) and "id" in x[-1]}
                assert refs <= defined, m
        for a in props.get("annotations", {}).get("horizontal", []):
            assert isinstance(a["value"], (int, float)), a

    for f, names in METRICS.items():
        for metric in names:
            assert (ns, metric, fn[f]) in named, (f, metric)
    work = stack.resolve({"Fn::GetAtt": ["WorkQueue", "QueueName"]})
    dlq = stack.resolve({"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]})
    for metric in ("ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible", "ApproximateAgeOfOldestMessage"):
        assert ("AWS/SQS", metric, work) in named, metric
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", dlq) in named
    for metric in ("ConcurrentExecutions", "Duration", "Throttles"):
        assert ("AWS/Lambda", metric, fn["worker"]) in named, metric
    for f in ("dispatcher", "poller"):
        for metric in ("Invocations", "Errors"):
            assert ("AWS/Lambda", metric, fn[f]) in named, (f, metric)

    (tokens,) = [w for w in widgets if w["type"] == "metric" and "Tokens per minute" in w["properties"]["title"]]
    tpm = p(stack, "TpmLimit")
    marks = tokens["properties"]["annotations"]["horizontal"]
    if tpm:
        assert marks == [{"label": "TpmLimit", "value": tpm}]
    else:
        assert marks == [] and "learned" in tokens["properties"]["title"]
    exprs = [m[-1]["expression"] for w in widgets if w["type"] == "metric" for m in w["properties"]["metrics"] if "expression" in m[-1]]
    assert any(e.startswith("RUNNING_SUM(") for e in exprs)
    (text,) = [w for w in widgets if w["type"] == "text"]
    assert "backfill redrive" in text["properties"]["markdown"]
