/* Test FMU (FMI 2.0 model exchange, C): dx/dt = (K*u - x)/tau, x(0) = x0, output x.
 * Built by tests/test_fmu.py with gcc against the FMI 2.0 headers shipped in FMPy.
 * getDerivatives fails when tau <= 0, so the adapter's NaN path can be tested.
 * Value references: 0 K, 1 tau, 2 x0, 3 u, 4 x, 5 der(x). */
#include <stdlib.h>
#include "fmi2Functions.h"

enum { K, TAU, X0, U, X, DER_X, NVARS };
static const double START[NVARS] = {2.0, 1.0, 0.0, 1.0, 0.0, 0.0};

typedef struct { double v[NVARS]; double time; } Instance;

static void defaults(Instance *m) {
    for (int i = 0; i < NVARS; i++) m->v[i] = START[i];
    m->time = 0.0;
}

static fmi2Status derivative(Instance *m) {
    if (!(m->v[TAU] > 0.0)) return fmi2Error;
    m->v[DER_X] = (m->v[K] * m->v[U] - m->v[X]) / m->v[TAU];
    return fmi2OK;
}

const char *fmi2GetTypesPlatform(void) { return fmi2TypesPlatform; }
const char *fmi2GetVersion(void) { return fmi2Version; }
fmi2Status fmi2SetDebugLogging(fmi2Component c, fmi2Boolean on, size_t n, const fmi2String cat[]) {
    return fmi2OK;
}

fmi2Component fmi2Instantiate(fmi2String name, fmi2Type type, fmi2String guid,
                              fmi2String resources, const fmi2CallbackFunctions *functions,
                              fmi2Boolean visible, fmi2Boolean logging) {
    if (type != fmi2ModelExchange) return NULL;
    Instance *m = calloc(1, sizeof(Instance));
    if (m) defaults(m);
    return m;
}

void fmi2FreeInstance(fmi2Component c) { free(c); }
fmi2Status fmi2SetupExperiment(fmi2Component c, fmi2Boolean tol_defined, fmi2Real tol,
                               fmi2Real start, fmi2Boolean stop_defined, fmi2Real stop) {
    ((Instance *)c)->time = start;
    return fmi2OK;
}
fmi2Status fmi2EnterInitializationMode(fmi2Component c) { return fmi2OK; }
fmi2Status fmi2ExitInitializationMode(fmi2Component c) {
    Instance *m = c;
    m->v[X] = m->v[X0];
    derivative(m);
    return fmi2OK;
}
fmi2Status fmi2Terminate(fmi2Component c) { return fmi2OK; }
fmi2Status fmi2Reset(fmi2Component c) {
    defaults(c);
    return fmi2OK;
}

fmi2Status fmi2GetReal(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Real value[]) {
    Instance *m = c;
    for (size_t i = 0; i < n; i++) {
        if (vr[i] >= NVARS) return fmi2Error;
        value[i] = m->v[vr[i]];
    }
    return fmi2OK;
}
fmi2Status fmi2SetReal(fmi2Component c, const fmi2ValueReference vr[], size_t n,
                       const fmi2Real value[]) {
    Instance *m = c;
    for (size_t i = 0; i < n; i++) {
        if (vr[i] > U) return fmi2Error; /* only parameters and the input can be set */
        m->v[vr[i]] = value[i];
    }
    return fmi2OK;
}

/* Unused parts of the interface: they exist because FMPy binds every FMI 2.0 function. */
#define UNSUPPORTED(sig) fmi2Status sig { return fmi2Error; }
UNSUPPORTED(fmi2GetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Integer v[]))
UNSUPPORTED(fmi2GetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Boolean v[]))
UNSUPPORTED(fmi2GetString(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2String v[]))
UNSUPPORTED(fmi2SetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Integer v[]))
UNSUPPORTED(fmi2SetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Boolean v[]))
UNSUPPORTED(fmi2SetString(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2String v[]))
UNSUPPORTED(fmi2GetFMUstate(fmi2Component c, fmi2FMUstate *s))
UNSUPPORTED(fmi2SetFMUstate(fmi2Component c, fmi2FMUstate s))
UNSUPPORTED(fmi2FreeFMUstate(fmi2Component c, fmi2FMUstate *s))
UNSUPPORTED(fmi2SerializedFMUstateSize(fmi2Component c, fmi2FMUstate s, size_t *size))
UNSUPPORTED(fmi2SerializeFMUstate(fmi2Component c, fmi2FMUstate s, fmi2Byte b[], size_t size))
UNSUPPORTED(fmi2DeSerializeFMUstate(fmi2Component c, const fmi2Byte b[], size_t size, fmi2FMUstate *s))
UNSUPPORTED(fmi2GetDirectionalDerivative(fmi2Component c, const fmi2ValueReference u[], size_t nu,
    const fmi2ValueReference k[], size_t nk, const fmi2Real dk[], fmi2Real du[]))

fmi2Status fmi2EnterEventMode(fmi2Component c) { return fmi2OK; }
fmi2Status fmi2NewDiscreteStates(fmi2Component c, fmi2EventInfo *info) {
    info->newDiscreteStatesNeeded = fmi2False;
    info->terminateSimulation = fmi2False;
    info->nominalsOfContinuousStatesChanged = fmi2False;
    info->valuesOfContinuousStatesChanged = fmi2False;
    info->nextEventTimeDefined = fmi2False;
    info->nextEventTime = 0.0;
    return fmi2OK;
}
fmi2Status fmi2EnterContinuousTimeMode(fmi2Component c) { return fmi2OK; }
fmi2Status fmi2CompletedIntegratorStep(fmi2Component c, fmi2Boolean no_set_prior,
                                       fmi2Boolean *enter_event, fmi2Boolean *terminate) {
    *enter_event = fmi2False;
    *terminate = fmi2False;
    return fmi2OK;
}
fmi2Status fmi2SetTime(fmi2Component c, fmi2Real t) {
    ((Instance *)c)->time = t;
    return fmi2OK;
}
fmi2Status fmi2SetContinuousStates(fmi2Component c, const fmi2Real x[], size_t nx) {
    if (nx != 1) return fmi2Error;
    ((Instance *)c)->v[X] = x[0];
    return fmi2OK;
}
fmi2Status fmi2GetDerivatives(fmi2Component c, fmi2Real dx[], size_t nx) {
    Instance *m = c;
    if (nx != 1 || derivative(m) != fmi2OK) return fmi2Error;
    dx[0] = m->v[DER_X];
    return fmi2OK;
}
fmi2Status fmi2GetEventIndicators(fmi2Component c, fmi2Real z[], size_t nz) { return fmi2OK; }
fmi2Status fmi2GetContinuousStates(fmi2Component c, fmi2Real x[], size_t nx) {
    if (nx != 1) return fmi2Error;
    x[0] = ((Instance *)c)->v[X];
    return fmi2OK;
}
fmi2Status fmi2GetNominalsOfContinuousStates(fmi2Component c, fmi2Real x[], size_t nx) {
    for (size_t i = 0; i < nx; i++) x[i] = 1.0;
    return fmi2OK;
}
